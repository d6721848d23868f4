"""`o2o-sim`: collect offline datasets, replay episodes, run the simulator demo.

User errors (a missing or damaged dataset, a wrong task name, an index out of range) end the
command with exit status 1 (2 for bad arguments) and one line naming the problem.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from robot_node.dataset import Dataset, DatasetError, Episode, open_dataset
from sim.collect import CollectConfig, collect, summary
from sim.env import IMAGE_SIZES
from sim.replay import write_replay
from sim.scripted import ATTEMPTS
from sim.tasks import TASKS

PROG = "o2o-sim"
DEMO_COLLECTOR = "o2o-sim demo"


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr, not the usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    collect = commands.add_parser("collect", help="collect scripted attempts and random rollouts into a dataset")
    collect.add_argument("--task", required=True, choices=sorted(TASKS))
    collect.add_argument("--episodes", required=True, type=int)
    collect.add_argument("--random-fraction", type=float, default=0.5, help="share of uniform-random rollouts (default 0.5)")
    collect.add_argument(
        "--partial-fraction",
        type=float,
        default=0.5,
        help="share of scripted attempts that stop short: pick-only or open-only (default 0.5)",
    )
    collect.add_argument("--seed", type=int, default=0)
    collect.add_argument("--image-size", type=int, default=64, choices=IMAGE_SIZES)
    collect.add_argument("--out", required=True, type=Path, help="new dataset directory")
    collect.set_defaults(run=run_collect)

    replay = commands.add_parser("replay", help="write an episode as an image strip (.png) or a video (.mp4)")
    replay.add_argument("dataset", type=Path)
    replay.add_argument("--episode", type=int, default=0)
    replay.add_argument("--every", type=int, default=1, help="keep every n-th frame (default 1)")
    replay.add_argument("--out", required=True, type=Path)
    replay.set_defaults(run=run_replay)

    demo = commands.add_parser("demo", help="collect a small dataset per task and show a scripted success")
    demo.add_argument("--out", required=True, type=Path)
    demo.add_argument("--episodes", type=int, default=400, help="episodes per task (default 400)")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=run_demo)
    return parser


def run_collect(args: argparse.Namespace) -> int:
    config = CollectConfig(
        task=args.task,
        episodes=args.episodes,
        random_fraction=args.random_fraction,
        seed=args.seed,
        image_size=args.image_size,
        partial_fraction=args.partial_fraction,
    )
    config.validate()
    print(summary(collect(args.out, config)))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    dataset = open_dataset(args.dataset)
    path = write_replay(args.out, read_episode(dataset, args.episode), every=args.every)
    record = dataset.records[args.episode]
    print(f"{path}: episode {args.episode} ({record.source}, {record.length} steps, return {record.episode_return:g})")
    return 0


def read_episode(dataset: Dataset, index: int) -> Episode:
    if not 0 <= index < len(dataset):
        raise DatasetError(f"{dataset.root}: episode {index} is out of range; it holds episodes 0 to {len(dataset) - 1}")
    return dataset.read(index)


def run_demo(args: argparse.Namespace) -> int:
    """Collect a small dataset of each task, print its figures and write a strip of a scripted success."""
    start = time.monotonic()
    for name in TASKS:
        root = args.out / name
        clear_previous_demo(root)
        config = CollectConfig(task=name, episodes=args.episodes, random_fraction=0.3, seed=args.seed)
        dataset = collect(root, config, collector=DEMO_COLLECTOR)
        print(summary(dataset))
        full = f"scripted_{ATTEMPTS[name][0]}"
        shown = next((i for i, r in enumerate(dataset.records) if r.source == full and r.success), None)
        if shown is None:
            raise DatasetError(f"{root}: no {full} episode succeeded; run the demo with more --episodes")
        strip = write_replay(args.out / f"{name}_success.png", dataset.read(shown), every=2)
        print(f"  a scripted success, episode {shown}: {strip}")
    print(f"demo done in {time.monotonic() - start:.0f} s; look at an episode with: {PROG} replay {args.out / 'pick_place'} --episode K --out strip.png")
    return 0


def clear_previous_demo(root: Path) -> None:
    """The demo overwrites its own earlier output, and nothing else."""
    if not root.exists():
        return
    try:
        previous = open_dataset(root)
    except DatasetError:
        raise DatasetError(f"{root}: exists and is not an earlier demo's dataset; choose another --out") from None
    if previous.meta.get("collector") != DEMO_COLLECTOR:
        raise DatasetError(f"{root}: holds a dataset the demo did not write; choose another --out")
    shutil.rmtree(root)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (DatasetError, ValueError, OSError) as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted (a dataset keeps the episodes finished so far)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
