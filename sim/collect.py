"""Offline data collection: scripted attempts mixed with uniform-random rollouts, written as an
episode dataset (robot_node/dataset.py, the one format the trainer reads).

Every episode is reproducible from the seed in its manifest record: the environment is reset
with it and the acting policy draws its noise from a generator seeded with it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import gymnasium as gym
import mujoco
import numpy as np
from tqdm import tqdm

from robot_node.dataset import Dataset, DatasetWriter, Episode
from sim.controller import ControlConfig
from sim.scripted import ATTEMPTS, ScriptedPolicy, ScriptNoise
from sim.tasks import TASKS

RANDOM = "random"


@dataclass(frozen=True)
class CollectConfig:
    task: str
    episodes: int
    random_fraction: float  # share of uniform-random rollouts; the rest are scripted attempts
    seed: int
    image_size: int = 64
    partial_fraction: float = 0.5  # share of scripted attempts that stop short (pick / open only)

    def validate(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        for name in ("random_fraction", "partial_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must lie in [0, 1], got {value}")

    def plan(self) -> list[tuple[str, int]]:
        """(source, seed) per episode: exact shares of each source, in a seeded random order."""
        rng = np.random.default_rng(self.seed)
        full, partial = ATTEMPTS[self.task]
        n_random = round(self.random_fraction * self.episodes)
        n_partial = round(self.partial_fraction * (self.episodes - n_random))
        sources = [RANDOM] * n_random + [f"scripted_{partial}"] * n_partial
        sources += [f"scripted_{full}"] * (self.episodes - len(sources))
        rng.shuffle(sources)
        seeds = rng.integers(0, 2**31 - 1, size=self.episodes)
        return list(zip(sources, (int(s) for s in seeds)))


def rollout(env: gym.Env, seed: int, act: Callable[[dict], np.ndarray]) -> tuple[Episode, bool]:
    """Run one fixed-length episode; success means the task's reward was earned at some step."""
    obs, info = env.reset(seed=seed)
    frames, states, actions, rewards = [obs["pixels"]], [obs["state"]], [], []
    done = False
    while not done:
        action = act(info)
        obs, reward, terminated, truncated, info = env.step(action)
        frames.append(obs["pixels"])
        states.append(obs["state"])
        actions.append(action)
        rewards.append(reward)
        done = terminated or truncated
    terminals, truncations = np.zeros(len(actions), bool), np.zeros(len(actions), bool)
    terminals[-1], truncations[-1] = terminated, truncated
    episode = Episode(
        frames=np.stack(frames),
        states=np.stack(states).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        terminals=terminals,
        truncations=truncations,
    )
    return episode, bool(episode.rewards.max() > 0)


def make_actor(task: str, source: str, seed: int) -> Callable[[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    if source == RANDOM:
        return lambda info: rng.uniform(-1.0, 1.0, 4).astype(np.float32)
    policy = ScriptedPolicy(task, rng)
    policy.reset(source.removeprefix("scripted_"))
    return policy.act


def collect(
    out: str | os.PathLike[str],
    config: CollectConfig,
    *,
    collector: str = "o2o-sim collect",
    progress: bool = True,
) -> Dataset:
    """Collect `config.episodes` episodes into a new dataset directory `out`."""
    config.validate()
    task = TASKS[config.task]
    meta = {
        "collector": collector,
        **asdict(config),
        "script_noise": asdict(ScriptNoise()),
        "control": asdict(ControlConfig()),
        "mujoco": mujoco.__version__,
    }
    env = gym.make(task.env_id, image_size=config.image_size)
    try:
        writer = DatasetWriter(
            out,
            task=task.name,
            env_id=task.env_id,
            observation_spec=env.unwrapped.observation_spec,
            action_spec=env.unwrapped.action_spec,
            max_episode_steps=task.max_episode_steps,
            meta=meta,
        )
        successes = 0
        with tqdm(config.plan(), desc=f"collect {task.name}", unit="ep", disable=not progress) as bar:
            for i, (source, seed) in enumerate(bar, start=1):
                episode, success = rollout(env, seed, make_actor(task.name, source, seed))
                writer.add(episode, source=source, success=success, seed=seed)
                successes += success
                bar.set_postfix(success=f"{successes / i:.2f}")
    finally:
        env.close()
    return writer.dataset


def summary(dataset: Dataset) -> str:
    """What a person wants to know about a dataset, a few lines."""
    lines = [
        f"{dataset.root}: task {dataset.task}, {len(dataset)} episodes, {dataset.num_transitions} transitions, "
        f"success rate {dataset.success_rate:.2f}"
    ]
    for source in sorted({r.source for r in dataset.records}):
        records = [r for r in dataset.records if r.source == source]
        rate = sum(r.success for r in records) / len(records)
        lines.append(f"  {source:<16} {len(records):5d} episodes  success rate {rate:.2f}")
    return "\n".join(lines)
