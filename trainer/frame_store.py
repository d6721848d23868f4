"""Pixel transitions with every frame stored once.

Slot i holds one observation (frame, state, optional cached encoder features) and, when a
transition starts there, its action, reward, terminal flag and the slot of its next
observation. A T-step episode therefore costs T+1 frames, not 2T, and episodes from several
robots may interleave freely. As a ring buffer the store overwrites its oldest slot first; a
transition disappears with its first frame, which is always older than its next frame, so no
surviving transition ever points at an overwritten frame.
"""

from __future__ import annotations

import numpy as np

from robot_node.dataset import Episode

NO_TRANSITION = -1


class FrameStore:
    def __init__(
        self, capacity: int, image_shape: tuple[int, ...], state_dim: int, action_dim: int, feature_dim: int = 0
    ) -> None:
        if capacity < 2:
            raise ValueError(f"a frame store needs room for at least 2 frames, got {capacity}")
        self.capacity = int(capacity)
        self.frames = np.zeros((capacity, *image_shape), np.uint8)
        self.states = np.zeros((capacity, state_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminals = np.zeros(capacity, bool)
        self.next_slot = np.full(capacity, NO_TRANSITION, np.int64)
        self.frame_ids = np.full(capacity, -1, np.int64)  # running count of the frame in each slot
        self.features = np.zeros((capacity, feature_dim), np.float16) if feature_dim else None
        self.frames_written = 0
        self.num_transitions = 0

    @property
    def num_frames(self) -> int:
        return min(self.frames_written, self.capacity)

    @property
    def nbytes(self) -> int:
        arrays = [self.frames, self.states, self.actions, self.rewards, self.terminals, self.next_slot, self.frame_ids]
        return sum(a.nbytes for a in arrays) + (self.features.nbytes if self.features is not None else 0)

    def add_frame(self, image: np.ndarray, state: np.ndarray, features: np.ndarray | None = None) -> tuple[int, int]:
        """Store one observation; returns (slot, frame id). A freshly written slot starts no
        transition: whatever transition started in the overwritten slot is gone."""
        slot = self.frames_written % self.capacity
        if self.next_slot[slot] != NO_TRANSITION:
            self.next_slot[slot] = NO_TRANSITION
            self.num_transitions -= 1
        self.frames[slot] = image
        self.states[slot] = state
        if self.features is not None and features is not None:
            self.features[slot] = features
        frame_id = self.frames_written
        self.frame_ids[slot] = frame_id
        self.frames_written += 1
        return slot, frame_id

    def holds(self, slot: int, frame_id: int) -> bool:
        """Whether `slot` still holds the frame that was written with `frame_id`."""
        return bool(self.frame_ids[slot] == frame_id)

    def link(self, slot: int, action: np.ndarray, reward: float, terminal: bool, next_slot: int) -> None:
        """Make slot's observation the start of a transition to next_slot's observation."""
        if self.next_slot[slot] == NO_TRANSITION:
            self.num_transitions += 1
        self.actions[slot] = action
        self.rewards[slot] = reward
        self.terminals[slot] = terminal
        self.next_slot[slot] = next_slot

    def add_episode(self, episode: Episode, features: np.ndarray | None = None) -> np.ndarray:
        """Append a whole episode in one go; returns the slots where its transitions start."""
        t = episode.length
        if t + 1 > self.capacity:
            raise ValueError(f"an episode of {t + 1} frames does not fit in {self.capacity} slots")
        start = self.frames_written % self.capacity
        slots = (start + np.arange(t + 1)) % self.capacity
        gone = self.next_slot[slots] != NO_TRANSITION
        self.num_transitions -= int(gone.sum())
        self.next_slot[slots] = NO_TRANSITION
        self.frames[slots] = episode.frames
        self.states[slots] = episode.states
        if self.features is not None and features is not None:
            self.features[slots] = features
        self.frame_ids[slots] = self.frames_written + np.arange(t + 1)
        self.frames_written += t + 1
        starts = slots[:-1]
        self.actions[starts] = episode.actions
        self.rewards[starts] = episode.rewards
        self.terminals[starts] = episode.terminals
        self.next_slot[starts] = slots[1:]
        self.num_transitions += t
        return starts

    def cache_features(self, features: np.ndarray) -> None:
        """Attach encoder features for every slot written so far (frozen-encoder fine-tuning)."""
        if len(features) != self.num_frames:
            raise ValueError(f"{len(features)} feature rows for {self.num_frames} frames")
        self.features = np.zeros((self.capacity, features.shape[1]), np.float16)
        self.features[: len(features)] = features

    def monte_carlo_returns(self, gamma: float) -> np.ndarray:
        """Every slot's discounted return to the end of its stored episode (0 where no
        transition starts): the value the data's own behaviour reached from there, Cal-QL's
        lower bound. A time-limited episode counts no reward beyond its last stored step."""
        returns = np.zeros(self.capacity, np.float32)
        for slot in sorted(self.transition_slots(), key=lambda s: self.frame_ids[s], reverse=True):
            following = 0.0 if self.terminals[slot] else returns[self.next_slot[slot]]
            returns[slot] = self.rewards[slot] + gamma * following
        return returns

    def transition_slots(self) -> np.ndarray:
        return np.flatnonzero(self.next_slot != NO_TRANSITION)

    def sample_uniform(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """Slots of `count` transitions drawn uniformly (with replacement)."""
        if self.num_transitions == 0:
            raise ValueError("cannot sample: the store holds no transitions")
        # Most slots start a transition (all but one per episode), so rejection is cheap.
        out = np.empty(0, np.int64)
        while out.size < count:
            draw = rng.integers(0, self.num_frames, size=2 * (count - out.size) + 8)
            out = np.concatenate([out, draw[self.next_slot[draw] != NO_TRANSITION]])
        return out[:count]

    def gather(
        self, slots: np.ndarray, use_features: bool, n_step: int = 1, gamma: float = 0.99
    ) -> dict[str, np.ndarray]:
        """The transitions starting at `slots` (any shape) as arrays with that leading shape.

        With `n_step` > 1 each transition is followed along its episode for up to n steps:
        `reward` is the discounted sum r_t + γ r_{t+1} + …, `next_obs` the observation where
        the sum stops and `discount` the factor its bootstrap gets (γ^k, 0 after a terminal
        step). A sum stops early at a terminal step and where the episode's stored steps end
        (its time limit, or the newest step of an episode still streaming), so a truncated
        episode still bootstraps from its last observation.
        """
        nxt = self.next_slot[slots]
        if (nxt == NO_TRANSITION).any():
            raise IndexError("gather() was given a slot where no transition starts")
        source = self.features if use_features else self.frames
        if source is None:
            raise ValueError("this store caches no encoder features")
        reward = self.rewards[slots].copy()
        discount = np.where(self.terminals[slots], 0.0, gamma).astype(np.float32)
        for _ in range(n_step - 1):
            going = (discount > 0.0) & (self.next_slot[nxt] != NO_TRANSITION)
            if not going.any():
                break
            at = nxt[going]
            reward[going] += discount[going] * self.rewards[at]
            discount[going] *= np.where(self.terminals[at], 0.0, gamma).astype(np.float32)
            nxt[going] = self.next_slot[at]
        return {
            "obs": source[slots],
            "state": self.states[slots],
            "action": self.actions[slots],
            "reward": reward,
            "discount": discount,
            "next_obs": source[nxt],
            "next_state": self.states[nxt],
        }
