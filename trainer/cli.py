"""`o2o-trainer`: pretrain, finetune-local, serve, export, plot, study.

User errors (bad dataset, bad run directory, wrong flags) end with exit status 2 and one line
naming the problem; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from robot_node.dataset import DatasetError
from robot_node.spec import SpecError
from trainer.checkpoint import RunError
from trainer.config import (
    FinetuneConfig,
    PretrainConfig,
    ServeConfig,
    add_config_flags,
    config_from_args,
    config_value,
    read_config,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="o2o-trainer", description="Offline pretraining, online fine-tuning (local or from robots) and export of the policy ensemble."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pretrain = commands.add_parser("pretrain", help="train N CQL agents on an offline dataset")
    add_config_flags(pretrain, PretrainConfig)
    finetune = commands.add_parser("finetune-local", help="fine-tune online against a local gymnasium env")
    add_config_flags(finetune, FinetuneConfig)
    serve = commands.add_parser(
        "serve", help="fine-tune from the episodes robots stream in and push the weights back to them"
    )
    add_config_flags(serve, ServeConfig)
    export = commands.add_parser("export", help="write the ensemble policy as one ONNX graph for the robot")
    export.add_argument("run", type=Path, metavar="RUN")
    export.add_argument("--out", type=Path, required=True, help="ONNX file to write (weights inside)")
    export.add_argument("--version", type=int, default=1, help="policy version written to the metadata (default: 1)")
    plot = commands.add_parser("plot", help="draw learning curves of runs to a PNG")
    plot.add_argument("runs", type=Path, nargs="+", metavar="RUN")
    plot.add_argument("--out", type=Path, required=True, help="PNG file to write")
    study = commands.add_parser(
        "study", help="run a grid of finetune-local runs from a YAML spec (resumable) and tabulate their success"
    )
    study.add_argument("spec", type=Path, nargs="?", metavar="SPEC", help="the study's YAML spec (README)")
    study.add_argument("--out", type=Path, help="study directory: runs/, spec.yaml, study.json, study.md, study.png")
    study.add_argument("--workers", type=int, default=1, help="runs at once, one torch thread each (default: 1)")
    study.add_argument(
        "--report", type=Path, metavar="DIR", help="rewrite DIR's study.json, .md and .png from its finished runs"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "pretrain":
            config, _ = _config(parser, PretrainConfig, args)
            from trainer.pretrain import pretrain

            run = pretrain(config)
            print(f"pretrained ensemble saved in {run}")
        elif args.command == "finetune-local":
            config, given = _config(parser, FinetuneConfig, args)
            from trainer.finetune import finetune_local

            run = finetune_local(config, given)
            print(f"fine-tuned ensemble saved in {run}; summary in {run / 'summary.json'}")
        elif args.command == "serve":
            config, given = _config(parser, ServeConfig, args)
            logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
            for ours in ("trainer", "robot_node"):  # the exporter's libraries log a lot at INFO
                logging.getLogger(ours).setLevel(logging.INFO)
            from trainer.service import serve

            run = serve(config, given)  # stdout carries only its "listening on" line, for a parent process
            logging.getLogger("trainer.service").info("fine-tuned ensemble in %s; summary in %s", run, run / "summary.json")
        elif args.command == "study":
            from trainer.study import study

            return study(args.spec, args.out, args.workers, args.report)
        elif args.command == "export":
            _export(args.run, args.out, args.version)
        else:
            from trainer.plot import plot_runs

            print(f"wrote {plot_runs(args.runs, args.out)}")
    except (DatasetError, SpecError, RunError) as exc:
        print(f"o2o-trainer {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"o2o-trainer {args.command}: interrupted; the last checkpoint is kept", file=sys.stderr)
        return 130
    return 0


def _config(parser: argparse.ArgumentParser, cls: type, args: argparse.Namespace):
    try:
        if not getattr(args, "resume", False):
            return config_from_args(cls, args)
        return _resumed_config(cls, args)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))


def _resumed_config(cls: type, args: argparse.Namespace):
    """A resumed run continues with the settings it was started with; flags given override them,
    except those the checkpoint fixes (the network's shape, the optimisers' learning rates)."""
    if "preset" in vars(args):
        raise RunError("--preset chooses the settings of a new run; a resumed run keeps those in its config.json")
    path = Path(vars(args).get("out", "")) / "config.json"
    if not path.is_file():
        return config_from_args(cls, args)  # the run directory is checked (and refused) by the command
    try:
        saved = read_config(cls, path)
    except ValueError as exc:
        raise RunError(str(exc)) from None
    config, given = config_from_args(cls, args, base=saved)
    fixed = sorted(
        name
        for name in given
        if (name.startswith("network.") or name.endswith("_lr"))
        and config_value(config, name) != config_value(saved, name)
    )
    if fixed:
        raise RunError(f"--resume: {', '.join(fixed)} cannot change when resuming (they come with the checkpoint)")
    return config, given


def _export(run: Path, out: Path, version: int) -> None:
    from trainer.checkpoint import agent_from_checkpoint, read_checkpoint
    from trainer.export import export_onnx

    payload = read_checkpoint(run)
    data = export_onnx(agent_from_checkpoint(payload), version=version, train_step=int(payload["step"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    members = payload["network"]["ensemble_size"]
    print(f"wrote {out} ({len(data) / 1e6:.1f} MB, {members} members, step {payload['step']}, version {version})")


if __name__ == "__main__":
    sys.exit(main())
