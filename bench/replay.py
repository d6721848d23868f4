"""Replay benchmark: sum-tree sampling and priority updates at 10^6 entries, and the memory a
stored 64x64 pixel transition costs relative to one frame.

Prints one JSON object on its last line with `sample256_ms` (target <= 0.5),
`priority_updates_per_s` (target >= 1e6) and `bytes_per_transition_over_frame` (target <= 1.1).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from robot_node.dataset import Episode
from robot_node.link_interface import Transition
from trainer.frame_store import FrameStore
from trainer.replay import Replay, ReplayConfig
from trainer.sum_tree import SumTree

ENTRIES = 1_000_000
IMAGE = (64, 64, 3)
STEPS = 40  # PickPlace episode length


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_tree(repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    tree = SumTree(ENTRIES)
    tree.update(np.arange(ENTRIES), rng.uniform(0.001, 10.0, ENTRIES))
    sample = median_seconds(lambda: tree.sample(256, rng), repeats)
    rates = {}
    for size in (256, 65_536):  # one learner batch; a large catch-up batch
        indices, priorities = rng.integers(0, ENTRIES, size), rng.uniform(0.001, 10.0, size)
        rates[size] = size / median_seconds(lambda i=indices, p=priorities: tree.update(i, p), repeats)
    return {
        "sample256_ms": round(sample * 1e3, 4),
        "priority_updates_per_s": round(rates[256]),
        "priority_updates_per_s_batch65536": round(rates[65_536]),
    }


def bench_memory(episodes: int) -> dict[str, float]:
    """Offline episodes plus the same amount streamed online, as the learner holds them."""
    frames = np.random.default_rng(1).integers(0, 256, (STEPS + 1, *IMAGE), dtype=np.uint8)
    episode = Episode(
        frames,
        np.zeros((STEPS + 1, 6), np.float32),
        np.zeros((STEPS, 4), np.float32),
        np.zeros(STEPS, np.float32),
        np.zeros(STEPS, bool),
        np.eye(1, STEPS, STEPS - 1, dtype=bool)[0],
    )
    offline = FrameStore(episodes * (STEPS + 1), IMAGE, 6, 4)
    for _ in range(episodes):
        offline.add_episode(episode)
    replay = Replay(
        ReplayConfig(online_capacity=episodes * (STEPS + 1)),
        FrameStore(episodes * (STEPS + 1), IMAGE, 6, 4),
        offline,
        warmup=1,
    )
    for e in range(episodes):
        for t in range(STEPS):
            last = t == STEPS - 1
            replay.add(
                Transition(
                    f"e{e}",
                    t,
                    frames[t],
                    np.zeros(6, np.float32),
                    np.zeros(4, np.float32),
                    0.0,
                    False,
                    last,
                    0,
                    0.0,
                    frames[t + 1] if last else None,
                    np.zeros(6, np.float32) if last else None,
                )
            )
    transitions = offline.num_transitions + replay.online.num_transitions
    return {
        "bytes_per_transition_over_frame": round(replay.nbytes / transitions / np.prod(IMAGE), 4),
        "transitions_stored": transitions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats and a smaller memory sample (under a minute)"
    )
    args = parser.parse_args()
    repeats = 50 if args.quick else 500
    print(f"sum tree with {ENTRIES:,} entries, {repeats} repeats ...", flush=True)
    figures = bench_tree(repeats)
    episodes = 50 if args.quick else 250
    print(f"memory of {2 * episodes * STEPS:,} stored 64x64 transitions ...", flush=True)
    figures.update(bench_memory(episodes))
    figures.update(entries=ENTRIES, repeats=repeats)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
