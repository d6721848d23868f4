"""A small reach task for the trainer's tests, registered as `o2o_test/Reach-v0`.

It follows the simulator's env contract (obs dict of uint8 "pixels" and float32 "state",
4-d normalised action, sparse reward, fixed-length episodes, `info["success"]`, specs on
`env.unwrapped`) but is tiny and cheap: a point hand moves in the plane; the reward is 1 on
every step it spends within reach of the goal. A 16x16 image shows both, and the state holds
both positions, so it is learnable from state in seconds. Also: a writer for offline datasets
of noisy scripted and random episodes.
"""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from robot_node.dataset import DatasetWriter
from robot_node.spec import ActionSpec, ObservationSpec
from sim.collect import rollout

ENV_ID = "o2o_test/Reach-v0"
IMAGE = 16
MAX_STEPS = 20
STEP_SIZE = 0.15
SUCCESS_RADIUS = 0.15


class ReachEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self) -> None:
        self.observation_spec = ObservationSpec((IMAGE, IMAGE, 3), ("x", "y", "goal_x", "goal_y"))
        self.action_spec = ActionSpec()
        self.observation_space = gym.spaces.Dict(
            pixels=gym.spaces.Box(0, 255, (IMAGE, IMAGE, 3), np.uint8),
            state=gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.hand = np.zeros(2)
        self.goal = np.zeros(2)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.goal = self.np_random.uniform(-0.7, 0.7, 2)
        self.hand = self.np_random.uniform(-0.7, 0.7, 2)
        while np.linalg.norm(self.hand - self.goal) < 0.6:
            self.hand = self.np_random.uniform(-0.7, 0.7, 2)
        self.t = 0
        return self._obs(), self._info(False)

    def step(self, action):
        action = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
        self.hand = np.clip(self.hand + STEP_SIZE * action[:2], -1.0, 1.0)
        self.t += 1
        success = bool(np.linalg.norm(self.hand - self.goal) < SUCCESS_RADIUS)
        return self._obs(), float(success), False, self.t >= MAX_STEPS, self._info(success)

    def _info(self, success: bool) -> dict:
        """Like the simulator's: success plus privileged positions for scripted policies."""
        return {"success": success, "hand": self.hand.copy(), "goal": self.goal.copy()}

    def _obs(self) -> dict[str, np.ndarray]:
        image = np.zeros((IMAGE, IMAGE, 3), np.uint8)
        for position, channel in ((self.goal, 1), (self.hand, 0)):
            row, col = ((position + 1.0) / 2.0 * (IMAGE - 1)).round().astype(int)
            image[max(row - 1, 0) : row + 2, max(col - 1, 0) : col + 2, channel] = 255
        state = np.concatenate([self.hand, self.goal]).astype(np.float32)
        return {"pixels": image, "state": state}


@pytest.fixture(scope="module", autouse=True)
def torch_single_thread():
    """Small networks on a shared 2-core machine run faster on one thread than on two that
    compete with other processes. Import it into a test module to apply it there."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=ReachEnv)


def scripted_action(info: dict, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Head for the goal, with Gaussian noise of `noise` on every action dimension."""
    toward = (info["goal"] - info["hand"]) / STEP_SIZE
    action = np.concatenate([toward, [0.0, 0.0]]) + noise * rng.standard_normal(4)
    return np.clip(action, -1.0, 1.0).astype(np.float32)


def write_reach_dataset(root: Path, scripted: int, random: int, noise: float = 1.0, seed: int = 0) -> Path:
    """Noisy scripted episodes and uniformly random ones, as an o2o_rl/episodes dataset."""
    env = gym.make(ENV_ID)
    spec = env.unwrapped
    writer = DatasetWriter(
        root,
        task="reach",
        env_id=ENV_ID,
        observation_spec=spec.observation_spec,
        action_spec=spec.action_spec,
        max_episode_steps=MAX_STEPS,
    )
    rng = np.random.default_rng(seed)
    sources = [("scripted", lambda info: scripted_action(info, noise, rng))] * scripted
    sources += [("random", lambda info: rng.uniform(-1, 1, 4).astype(np.float32))] * random
    for i, (source, act) in enumerate(sources):
        episode, success = rollout(env, seed * 100_000 + i, act)
        writer.add(episode, source=source, success=success, seed=i)
    env.close()
    return root
