"""Balanced replay: one prioritised buffer over offline ∪ online transitions (Lee et al. 2021).

Offline transitions occupy tree leaves [0, n_offline), the online ring the leaves after them.
The three replay modes are the same tree with different priority rules:

- balanced: priorities come from the density ratio w(s, a) = d_online / d_offline (set by the
  learner after every update); new online transitions enter at the running maximum, which
  starts where the online share of the first update's draw equals `init_online_fraction`.
- uniform: every transition at priority 1, never changed (one buffer, uniform).
- online_only: offline transitions at priority 0 (SAC from scratch uses this with no
  offline data at all).

Streamed transitions arrive one step at a time (robot_node.link_interface.Transition); a step
becomes a sampleable transition when the next step of its episode brings the next frame.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from robot_node.link_interface import Transition
from trainer.frame_store import FrameStore
from trainer.sum_tree import SumTree

REPLAY_MODES = ("balanced", "uniform", "online_only")


@dataclass(frozen=True)
class ReplayConfig:
    mode: str = "balanced"  # balanced | uniform | online_only
    online_capacity: int = 100_000  # frames (about transitions) kept from the robot or the env
    init_online_fraction: float = 0.5
    temperature: float = 5.0  # priorities are w ** (1 / temperature)
    min_priority: float = 1e-3
    max_priority: float = 1e3

    def __post_init__(self) -> None:
        if self.mode not in REPLAY_MODES:
            raise ValueError(f"replay mode must be one of {', '.join(REPLAY_MODES)}, got {self.mode!r}")
        if not 0.0 < self.init_online_fraction < 1.0:
            raise ValueError(f"init_online_fraction must lie in (0, 1), got {self.init_online_fraction}")


@dataclass
class _Pending:
    """The latest step of an unfinished episode, waiting for its next frame."""

    slot: int
    frame_id: int
    step: int
    action: np.ndarray
    reward: float
    terminal: bool


class Replay:
    MAX_OPEN_EPISODES = 256  # robots × concurrent episodes we wait on; the oldest is dropped beyond
    MAX_FINISHED_EPISODES = 4096  # finished episodes remembered to recognise late resends

    def __init__(
        self, config: ReplayConfig, online: FrameStore, offline: FrameStore | None, warmup: int, seed: int = 0
    ) -> None:
        if config.mode != "online_only" and offline is None:
            raise ValueError(f"replay mode {config.mode!r} needs offline data")
        self.config = config
        self.online = online
        self.offline = offline
        self.n_offline = offline.capacity if offline is not None else 0
        self.tree = SumTree(self.n_offline + online.capacity)
        self.rng = np.random.default_rng(seed)
        self._open: OrderedDict[str, _Pending] = OrderedDict()
        self._finished: OrderedDict[str, int] = OrderedDict()  # episode id -> its last step
        self.counters = {"transitions": 0, "episodes": 0, "gaps": 0, "duplicates": 0, "dropped_open": 0}
        self.max_priority = 1.0
        if offline is not None:
            slots = offline.transition_slots()
            self.tree.update(slots, 0.0 if config.mode == "online_only" else 1.0)
            if config.mode == "balanced":
                f = config.init_online_fraction
                self.max_priority = len(slots) * f / ((1.0 - f) * max(1, warmup))

    # -- adding online data ------------------------------------------------------------------
    def add(self, t: Transition, features: np.ndarray | None = None, next_features: np.ndarray | None = None) -> None:
        """Store one streamed step (already validated). A step at or before the newest one held
        for its episode is a resend and ignored; a skipped step cuts the episode there."""
        pending = self._open.get(t.episode_id)
        newest = pending.step if pending is not None else self._finished.get(t.episode_id)
        if newest is not None and t.step <= newest:
            self.counters["duplicates"] += 1
            return
        self._open.pop(t.episode_id, None)
        slot = self._write_frame(t.image, t.state, features)
        if pending is not None:
            if t.step == pending.step + 1 and self.online.holds(pending.slot, pending.frame_id):
                self._link(pending, slot)
            else:
                self.counters["gaps"] += 1
        current = _Pending(slot, self.online.frame_ids[slot], t.step, t.action, t.reward, t.terminal)
        if t.is_last:
            if t.next_image is not None and t.next_state is not None:
                self._link(current, self._write_frame(t.next_image, t.next_state, next_features))
            else:
                self.counters["gaps"] += 1  # a last step without its final observation is unusable
            self.counters["episodes"] += 1
            _remember(self._finished, t.episode_id, t.step, self.MAX_FINISHED_EPISODES)
            return
        if _remember(self._open, t.episode_id, current, self.MAX_OPEN_EPISODES):
            self.counters["dropped_open"] += 1

    def _write_frame(self, image: np.ndarray, state: np.ndarray, features: np.ndarray | None) -> int:
        slot, _ = self.online.add_frame(image, state, features)
        self.tree.update([self.n_offline + slot], 0.0)  # whatever started here is gone
        return slot

    def _link(self, step: _Pending, next_slot: int) -> None:
        self.online.link(step.slot, step.action, step.reward, step.terminal, next_slot)
        priority = self.max_priority if self.config.mode == "balanced" else 1.0
        self.tree.update([self.n_offline + step.slot], priority)
        self.counters["transitions"] += 1

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, batch_size: int) -> np.ndarray:
        """Tree indices of one minibatch, drawn in proportion to priority."""
        return self.tree.sample(batch_size, self.rng)

    def is_offline(self, indices: np.ndarray) -> np.ndarray:
        return indices < self.n_offline

    def gather(
        self, indices: np.ndarray, use_features: bool, n_step: int = 1, gamma: float = 0.99
    ) -> dict[str, np.ndarray]:
        """Transitions for tree indices, from whichever store holds each, in the given order
        (n-step sums as FrameStore.gather)."""
        offline = self.is_offline(indices)
        parts = []
        if offline.any():
            assert self.offline is not None
            parts.append((offline, self.offline.gather(indices[offline], use_features, n_step, gamma)))
        if not offline.all():
            online = indices[~offline] - self.n_offline
            parts.append((~offline, self.online.gather(online, use_features, n_step, gamma)))
        if len(parts) == 1:
            return parts[0][1]
        out = {}
        for key, first in parts[0][1].items():
            column = np.empty((len(indices), *first.shape[1:]), first.dtype)
            for mask, data in parts:
                column[mask] = data[key]
            out[key] = column
        return out

    def update_priorities(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Balanced mode: set the sampled transitions' priorities (already normalised)."""
        priorities = np.clip(priorities, self.config.min_priority, self.config.max_priority)
        # A slot overwritten since it was sampled starts no transition now: keep it at zero.
        online = ~self.is_offline(indices)
        live = np.ones(len(indices), bool)
        live[online] = self.online.next_slot[indices[online] - self.n_offline] >= 0
        self.tree.update(indices[live], priorities[live])
        if live.any():
            self.max_priority = max(self.max_priority, float(priorities[live].max()))

    @property
    def nbytes(self) -> int:
        return self.online.nbytes + (self.offline.nbytes if self.offline is not None else 0) + self.tree.nbytes


def _remember(table: OrderedDict, key: str, value: object, limit: int) -> bool:
    """Insert into a bounded table; True when the oldest entry had to go."""
    table[key] = value
    if len(table) > limit:
        table.popitem(last=False)
        return True
    return False
