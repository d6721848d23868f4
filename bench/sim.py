"""Simulator throughput: env steps/s with and without rendering, and collection episodes/min.

Pinned to one CPU core by default, since the target is 1,000 env steps/s including a 64x64
render on one core (software rendering in Mesa would otherwise spread over every core).
Each figure is the median of a few timed runs; the machine may be shared, so expect noise.
Last line: one JSON object with steps_per_s_render64, steps_per_s_render128,
steps_per_s_norender, episodes_per_min_collect and the ratios between them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# This script is named like the package it measures: keep its own directory off the import path.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import sim  # noqa: E402,F401  (registers the o2o_rl/ environments)
from sim.collect import CollectConfig, collect  # noqa: E402
from sim.robot import SimRobot  # noqa: E402

TARGET_STEPS_PER_S = 1000.0


def median_rate(work: Callable[[], int], repeats: int) -> float:
    """Median over `repeats` runs of (units of work done) / (seconds taken)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = work()
        rates.append(done / (time.perf_counter() - start))
    return statistics.median(rates)


def env_steps(image_size: int, steps: int, repeats: int) -> float:
    env = gym.make("o2o_rl/PickPlace-v0", image_size=image_size)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4)).astype(np.float32)

    def work() -> int:
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        return steps

    rate = median_rate(work, repeats)
    env.close()
    return rate


def robot_steps(steps: int, repeats: int) -> float:
    """Physics and controller only: what an env step costs without the camera."""
    robot = SimRobot("pick_place.xml")
    robot.reset()
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 4))

    def work() -> int:
        for action in actions:
            robot.act(action)
        return steps

    return median_rate(work, repeats)


def collect_episodes(episodes: int, repeats: int) -> float:
    def work() -> int:
        with tempfile.TemporaryDirectory() as tmp:
            config = CollectConfig(task="pick_place", episodes=episodes, random_fraction=0.5, seed=0)
            collect(os.path.join(tmp, "d"), config, progress=False)
        return episodes

    return 60.0 * median_rate(work, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps, one run each (under a minute)")
    parser.add_argument("--all-cores", action="store_true", help="do not pin the process to one core")
    args = parser.parse_args()
    if not args.all_cores:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    steps, episodes, repeats = (400, 20, 1) if args.quick else (2000, 100, 3)

    figures = {}
    for key, measure in [
        ("steps_per_s_norender", lambda: robot_steps(steps, repeats)),
        ("steps_per_s_render64", lambda: env_steps(64, steps, repeats)),
        ("steps_per_s_render128", lambda: env_steps(128, steps, repeats)),
        ("episodes_per_min_collect", lambda: collect_episodes(episodes, repeats)),
    ]:
        figures[key] = round(measure(), 1)
        print(f"{key}: {figures[key]}", flush=True)
    figures.update(
        render64_over_target=round(figures["steps_per_s_render64"] / TARGET_STEPS_PER_S, 2),
        render64_over_norender=round(figures["steps_per_s_render64"] / figures["steps_per_s_norender"], 2),
        render128_over_render64=round(figures["steps_per_s_render128"] / figures["steps_per_s_render64"], 2),
        cores=len(os.sched_getaffinity(0)),
        quick=args.quick,
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
