"""One configuration dataclass per training command, and the CLI flags generated from it.

Every leaf field of a command's config (nested ones included) becomes a `--flag`; a field's
metadata may rename its flag (`{"cli": "replay"}`). Only flags given on the command line
override the defaults, and the command writes the resolved config next to its outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from trainer.cql import CQLConfig
from trainer.learner import STRATEGIES, LearnerConfig
from trainer.networks import NetworkConfig
from trainer.replay import REPLAY_MODES, ReplayConfig
from trainer.sac import NEXT_ACTIONS, POLICIES, SACConfig

_PRESET_HELP = "paper | cpu: the defaults that the other flags override (README)"
_THREADS_HELP = "CPU threads for torch; 0: torch's default. Where other processes share the cores, 1 is fastest"
_DATA_HELP = "offline dataset; empty: the one --init was pretrained on"
_RESUME_HELP = (
    "continue the run in --out from its checkpoint with the settings in its config.json; flags given "
    "override them, except the network's and the learning rates, which come with the checkpoint"
)


@dataclass(frozen=True)
class PretrainConfig:
    """Offline pretraining of N CQL agents on an episode dataset."""

    data: str = field(default="", metadata={"help": "offline dataset directory (o2o_rl/episodes)"})
    out: str = field(default="", metadata={"help": "run directory for checkpoints, metrics and config"})
    steps: int = field(default=5_000, metadata={"help": "gradient steps"})
    batch_size: int = field(default=256, metadata={"help": "transitions per member per step"})
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda[:i]"})
    threads: int = field(default=0, metadata={"help": _THREADS_HELP})
    resume: bool = field(default=False, metadata={"help": _RESUME_HELP})
    preset: str = field(default="paper", metadata={"help": _PRESET_HELP})
    member_batches: str = field(
        default="independent",
        metadata={"help": "independent (own minibatch per member, as the paper) | shared (N× fewer images to encode)"},
    )
    log_every: int = 50
    checkpoint_every: int = 1_000
    bc_steps: int = field(
        default=0,
        metadata={
            "help": "first steps in which the actors regress the data's actions, training the encoder with "
            "the critics, before CQL's actor loss takes over (the CQL reference's policy_eval_start, with the "
            "encoder learning from it)"
        },
    )
    eval_every: int = field(
        default=1_000,
        metadata={"help": "steps between evaluations in the dataset's env (deterministic action, fixed seeds); 0: none"},
    )
    eval_episodes: int = 10
    env_kwargs: str = field(
        default="", metadata={"help": 'JSON keyword arguments for the evaluation env, e.g. {"image_size": 84}'}
    )
    network: NetworkConfig = NetworkConfig()
    # The CQL reference backs up no entropy (its deterministic_backup=True): with a sparse 0/1
    # reward, -α log π summed over the horizon outweighs the reward and drives Q negative. Its
    # actor learning rate is 1e-4: after cloning, 3e-4 lost the cloned policy's successes.
    sac: SACConfig = SACConfig(backup_entropy=False, actor_lr=1e-4)
    cql: CQLConfig = CQLConfig()

    def __post_init__(self) -> None:
        if self.member_batches not in ("independent", "shared"):
            raise ValueError(f"member_batches must be 'independent' or 'shared', got {self.member_batches!r}")


@dataclass(frozen=True)
class FinetuneConfig:
    """Online fine-tuning against a local gymnasium environment (no ROS, no network)."""

    env: str = field(
        default="o2o_rl/PickPlace-v0", metadata={"help": "gymnasium id ('module:id' imports module first)"}
    )
    env_kwargs: str = field(
        default="", metadata={"help": 'JSON keyword arguments for gym.make, e.g. {"image_size": 84}'}
    )
    init: str = field(default="", metadata={"help": "pretrain run to start from; empty: SAC from scratch"})
    data: str = field(default="", metadata={"help": _DATA_HELP})
    out: str = ""
    steps: int = field(default=5_000, metadata={"help": "environment steps"})
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda[:i]"})
    threads: int = field(default=0, metadata={"help": _THREADS_HELP})
    preset: str = field(default="paper", metadata={"help": _PRESET_HELP})
    updates_per_step: int = 1
    eval_every: int = field(default=1_000, metadata={"help": "environment steps between deterministic evaluations"})
    eval_dense_every: int = field(
        default=250, metadata={"help": "steps between evaluations up to --eval-dense-until (0: none extra)"}
    )
    eval_dense_until: int = field(default=1_000, metadata={"help": "the first online steps evaluated densely"})
    eval_episodes: int = field(
        default=10, metadata={"help": "fixed-seed episodes per evaluation (standard error ≈ 0.5/√n: 50 for ±0.07)"}
    )
    log_every: int = 50
    checkpoint_every: int = 1_000
    learner: LearnerConfig = LearnerConfig()
    replay: ReplayConfig = ReplayConfig()
    network: NetworkConfig = field(
        default=NetworkConfig(), metadata={"help": "used from scratch; --init brings its own"}
    )
    sac: SACConfig = SACConfig()


@dataclass(frozen=True)
class ServeConfig:
    """The trainer service: fine-tune a pretrained ensemble from the episodes robots stream in and
    push its weights back to them (the networked twin of FinetuneConfig; steps are online
    transitions received, updates are gradient steps)."""

    init: str = field(default="", metadata={"help": "pretrain run whose ensemble is fine-tuned (required)"})
    data: str = field(default="", metadata={"help": _DATA_HELP})
    out: str = field(default="", metadata={"help": "run directory; the robots' episodes go to OUT/storage/dataset"})
    bind: str = field(default="tcp://*:5555", metadata={"help": "ZeroMQ endpoint robots connect to (port 0: any free)"})
    key: str = field(default="", metadata={"help": "the trainer's NAME.key_secret (o2o-keys generate)"})
    allow: str = field(default="", metadata={"help": "directory of the robots' public NAME.key files"})
    insecure: bool = field(default=False, metadata={"help": "no authentication or encryption (trusted networks only)"})
    steps: int = field(
        default=0, metadata={"help": "online transitions to receive, then stop; 0: run until SIGINT or SIGTERM"}
    )
    seed: int = 0
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda[:i]"})
    threads: int = field(default=0, metadata={"help": _THREADS_HELP})
    resume: bool = field(default=False, metadata={"help": _RESUME_HELP})
    preset: str = field(default="paper", metadata={"help": _PRESET_HELP})
    updates_per_step: int = field(
        default=1, metadata={"help": "updates allowed per online transition received (the update-to-data cap)"}
    )
    push_every: int = field(default=500, metadata={"help": "updates between weight pushes to the robots"})
    first_version: int = field(
        default=2, metadata={"help": "version of the first push (the robot starts with the export, version 1)"}
    )
    log_every: int = field(default=50, metadata={"help": "updates between metric lines"})
    checkpoint_every: int = field(default=1_000, metadata={"help": "updates between checkpoints"})
    learner: LearnerConfig = LearnerConfig()
    replay: ReplayConfig = ReplayConfig()
    network: NetworkConfig = field(
        default=NetworkConfig(), metadata={"help": "comes from --init; --ensemble-size takes its first members"}
    )
    sac: SACConfig = SACConfig()


# Presets are whole configs that the command-line flags then override. `paper` (the default)
# follows the paper and the CQL reference: 5 members with their own minibatches of 256, hidden
# width 256, one-step targets. `cpu` is the recipe that learned PickPlace from pixels on a
# 2-core CPU (README, "Learning PickPlace on a CPU"): 2 members, hidden width 128, one minibatch
# of 64 shared by the members, 3-step returns and 2,000 cloning steps that also train the
# encoder; fine-tuning (local or from robots) with batches of 128 after 400 warm-up steps.
_CPU_NETWORK = NetworkConfig(ensemble_size=2, hidden_dim=128)
_CPU_ONLINE = {  # fine-tuning, local or from robots
    "learner": LearnerConfig(batch_size=128, ratio_batch_size=128, warmup=400),
    "network": _CPU_NETWORK,
    "sac": dataclasses.replace(SACConfig(), n_step=3),
}
PRESETS: dict[type, dict[str, Any]] = {
    PretrainConfig: {
        "paper": PretrainConfig(),
        "cpu": PretrainConfig(
            preset="cpu",
            batch_size=64,
            member_batches="shared",
            bc_steps=2_000,
            network=_CPU_NETWORK,
            sac=dataclasses.replace(PretrainConfig().sac, n_step=3),
        ),
    },
    FinetuneConfig: {
        "paper": FinetuneConfig(),
        "cpu": FinetuneConfig(preset="cpu", **_CPU_ONLINE),
    },
    ServeConfig: {"paper": ServeConfig(), "cpu": ServeConfig(preset="cpu", **_CPU_ONLINE)},
}


# Flags whose field names would clash or read badly when flattened.
_CLI_NAMES = {
    ("ReplayConfig", "mode"): "replay",
    ("ReplayConfig", "temperature"): "priority-temperature",
    ("CQLConfig", "alpha"): "cql-alpha",
    ("CQLConfig", "num_actions"): "cql-actions",
    ("CQLConfig", "temperature"): "cql-temperature",
    ("CQLConfig", "lagrange"): "cql-lagrange",
    ("CQLConfig", "target_action_gap"): "cql-target-gap",
    ("CQLConfig", "lagrange_lr"): "cql-lagrange-lr",
    ("CQLConfig", "calibrated"): "cal-ql",
    ("SACConfig", "tau"): "target-tau",
    ("NetworkConfig", "encoder"): "encoder",
    ("LearnerConfig", "freeze_encoder"): "freeze-encoder-online",
    ("LearnerConfig", "policy"): "online-policy",
}
_CHOICES = {
    ("ReplayConfig", "mode"): REPLAY_MODES,
    ("NetworkConfig", "encoder"): ("shared", "per_member"),
    ("SACConfig", "next_action"): NEXT_ACTIONS,
    ("PretrainConfig", "member_batches"): ("independent", "shared"),
    ("LearnerConfig", "strategy"): STRATEGIES,
    ("LearnerConfig", "policy"): POLICIES,
    ("PretrainConfig", "preset"): tuple(PRESETS[PretrainConfig]),
    ("FinetuneConfig", "preset"): tuple(PRESETS[FinetuneConfig]),
    ("ServeConfig", "preset"): tuple(PRESETS[ServeConfig]),
}


def _leaves(cls: type, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dataclasses.Field, Any, type]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _leaves(hints[f.name], (*path, f.name))
        else:
            out.append(((*path, f.name), f, hints[f.name], cls))
    return out


def _parser_for(kind: Any) -> Any:
    """A string -> value converter for a field's type (int, float, str, bool, tuples, optionals)."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        inner = _parser_for(next(a for a in args if a is not type(None)))
        return lambda text: None if text.lower() in ("none", "auto", "") else inner(text)
    if typing.get_origin(kind) is tuple:
        item = _parser_for(args[0])
        return lambda text: tuple(item(part) for part in text.split(",") if part)
    if kind is bool:
        return _parse_bool
    return kind


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per leaf field of `cls` (defaults suppressed, so only given flags override)."""
    seen: set[str] = set()
    defaults = cls()  # a nested config may override its class's defaults (pretraining's SACConfig does)
    for path, f, kind, owner in _leaves(cls):
        name = _CLI_NAMES.get((owner.__name__, f.name), f.name.replace("_", "-"))
        if name in seen:
            raise AssertionError(f"two config fields share the flag --{name}")
        seen.add(name)
        default = config_value(defaults, ".".join(path))
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {_show(default)})".strip()
        dest = ".".join(path)
        if kind is bool:
            parser.add_argument(
                f"--{name}", dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            choices = _CHOICES.get((owner.__name__, f.name))
            metavar = None if choices else name.upper().replace("-", "_")
            parser.add_argument(
                f"--{name}",
                dest=dest,
                type=_parser_for(kind),
                choices=choices,
                metavar=metavar,
                default=argparse.SUPPRESS,
                help=help_text,
            )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "auto" if value is None else str(value)


def config_value(config: Any, dotted: str) -> Any:
    """A (nested) field of a config by its dotted name, e.g. "sac.actor_lr"."""
    return functools.reduce(getattr, dotted.split("."), config)


def config_from_args(cls: type, args: argparse.Namespace, base: Any | None = None) -> tuple[Any, set[str]]:
    """Build `cls` from `base` (default: the preset named by --preset) and the flags given;
    returns the config and the dotted names of the fields set on the command line."""
    given = {k: v for k, v in vars(args).items() if "." in k or k in {f.name for f in dataclasses.fields(cls)}}
    nested: dict[str, Any] = {}
    for dotted, value in given.items():
        node = nested
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if base is None:
        base = PRESETS[cls][nested.get("preset", "paper")]
    return _override(base, nested), set(given)


def _override(config: Any, values: dict[str, Any]) -> Any:
    """`config` with `values` replaced; a nested config keeps the fields not given (a preset's
    or a command's own defaults, such as pretraining's SACConfig, survive one flag)."""
    changes = {
        name: _override(getattr(config, name), value) if isinstance(value, dict) else value
        for name, value in values.items()
    }
    return dataclasses.replace(config, **changes)


def read_config(cls: type, path: Path) -> Any:
    """The config a run wrote to its config.json (what `--resume` continues with)."""
    try:
        data = json.loads(path.read_text())
        if data.get("command") != cls.__name__:
            raise ValueError(f"written by {data.get('command')!r}, not {cls.__name__}")
        return _from_dict(cls, data)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a readable {cls.__name__} ({exc})") from None


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            value, kind = data[f.name], hints[f.name]
            if dataclasses.is_dataclass(kind):
                value = _from_dict(kind, value)
            elif typing.get_origin(kind) is tuple:
                value = tuple(value)
            kwargs[f.name] = value
    return cls(**kwargs)


def write_config(run_dir: Path, config: Any, device: torch.device, **resolved: Any) -> None:
    """Write the resolved config (every field, plus values decided at run time) as JSON."""
    resolved = {"device": str(device), "threads": torch.get_num_threads(), **resolved}
    payload = {"command": type(config).__name__, **dataclasses.asdict(config), "resolved": resolved}
    (run_dir / "config.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
