"""Episode bookkeeping: rewards, time limit, success, and the transitions the link streams.

A step's transition is complete only at the next tick: its reward arrives in between, and its
next observation is that tick's observation. So the tracker keeps one pending step, and each
new observation closes it. An episode ends as terminal on success (the task is over: no
bootstrap) or truncated by the time limit, a stale camera, the e-stop or deactivation (bootstrap
from the final observation, which the last transition carries).
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass

import numpy as np

from robot_node.link_interface import Transition


@dataclass(frozen=True)
class Observation:
    image: np.ndarray  # uint8 [H, W, 3] RGB at the policy's input size
    state: np.ndarray  # float32 [S]
    stamp: float  # when the image was taken (header stamp, else arrival), seconds


@dataclass
class _Pending:
    step: int
    observation: Observation
    action: np.ndarray
    policy_version: int


def boot_id() -> str:
    """Distinguishes this run of the node, so episode ids stay unique across restarts: random
    bits beside the time, because a container's pid repeats and a robot's clock may not be set."""
    return f"{int(time.time()):x}{secrets.token_hex(4)}"


class EpisodeTracker:
    def __init__(self, robot_id: str, max_steps: int, success_reward: float, terminate_on_success: bool) -> None:
        self.robot_id, self.max_steps = robot_id, max_steps
        self.success_reward, self.terminate_on_success = success_reward, terminate_on_success
        self._boot = boot_id()
        self.running = False
        self.episode_id = ""
        self.step = 0
        self._pending: _Pending | None = None
        self._reward = 0.0
        self._success = False  # the pending step succeeded
        self._episode_succeeded = False
        self.counters = {"episodes": 0, "successes": 0, "terminal": 0, "truncated": 0, "bad_rewards": 0, "rewards_outside_episode": 0}

    def start(self) -> None:
        self.counters["episodes"] += 1
        self.episode_id = f"{self.robot_id}-{self._boot}-{self.counters['episodes']:06d}"
        self.running, self.step, self._pending, self._episode_succeeded = True, 0, None, False

    def add_reward(self, reward: float) -> bool:
        """Credit a reward to the pending step; False (counted) if there is none or it is not finite."""
        if not math.isfinite(reward):
            self.counters["bad_rewards"] += 1
            return False
        if self._pending is None:
            self.counters["rewards_outside_episode"] += 1
            return False
        self._reward += reward
        if reward >= self.success_reward:
            self._success = True
            if not self._episode_succeeded:
                self._episode_succeeded = True
                self.counters["successes"] += 1
        return True

    @property
    def has_pending(self) -> bool:
        return self._pending is not None

    def observe(self, observation: Observation) -> Transition | None:
        """Close the pending step with this observation as its next one. Ends the episode on
        success or the time limit (then `running` is False)."""
        if self._pending is None:
            return None
        terminal = self._success and self.terminate_on_success
        truncated = not terminal and self._pending.step + 1 >= self.max_steps
        return self._close(observation, terminal, truncated)

    def truncate(self, observation: Observation | None) -> Transition | None:
        """End the episode now (stale camera, e-stop, deactivation)."""
        transition = None
        if self._pending is not None:
            transition = self._close(observation or self._pending.observation, terminal=False, truncated=True)
        self.running = False
        return transition

    def act(self, observation: Observation, action: np.ndarray, policy_version: int) -> None:
        self._pending = _Pending(self.step, observation, action, policy_version)
        self._reward, self._success = 0.0, False

    def _close(self, next_observation: Observation, terminal: bool, truncated: bool) -> Transition:
        pending, self._pending = self._pending, None
        last = terminal or truncated
        transition = Transition(
            episode_id=self.episode_id,
            step=pending.step,
            image=pending.observation.image,
            state=pending.observation.state,
            action=pending.action,
            reward=self._reward,
            terminal=terminal,
            truncated=truncated,
            policy_version=pending.policy_version,
            stamp=pending.observation.stamp,
            next_image=next_observation.image if last else None,
            next_state=next_observation.state if last else None,
        )
        self.step = pending.step + 1
        if last:
            self.counters["terminal" if terminal else "truncated"] += 1
            self.running = False
        return transition
