"""A sum tree over priorities, vectorised with numpy: batched sampling and batched updates.

Leaves hold non-negative priorities; every inner node holds the sum of its two children, so
drawing an index with probability proportional to its priority, or changing a priority, costs
O(log n) — for a whole batch at once, one numpy operation per tree level. No Python loop runs
over the batch.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = int(capacity)
        self._leaf0 = 1 << max(0, (self.capacity - 1).bit_length())  # first leaf; root is node 1
        self._depth = self._leaf0.bit_length() - 1
        self._nodes = np.zeros(2 * self._leaf0, np.float64)

    @property
    def total(self) -> float:
        return float(self._nodes[1])

    @property
    def nbytes(self) -> int:
        return self._nodes.nbytes

    def priorities(self, indices: np.ndarray | slice = slice(None)) -> np.ndarray:
        return self._nodes[self._leaf0 : self._leaf0 + self.capacity][indices]

    def update(self, indices: np.ndarray, priorities: np.ndarray | float) -> None:
        """Set leaves; when an index repeats, the last value given wins."""
        indices = np.asarray(indices, np.int64).ravel()
        values = np.broadcast_to(np.asarray(priorities, np.float64), indices.shape)
        if indices.size == 0:
            return
        if indices.min() < 0 or indices.max() >= self.capacity:
            raise IndexError(f"indices must lie in [0, {self.capacity}), got [{indices.min()}, {indices.max()}]")
        if not np.isfinite(values).all() or (values < 0).any():
            raise ValueError("priorities must be finite and non-negative")
        nodes = indices + self._leaf0
        self._nodes[nodes] = values
        for _ in range(self._depth):
            nodes = nodes >> 1
            # Each parent is recomputed from both children, so repeated parents are harmless.
            self._nodes[nodes] = self._nodes[2 * nodes] + self._nodes[2 * nodes + 1]

    def sample(self, count: int, rng: np.random.Generator) -> np.ndarray:
        """`count` leaf indices drawn independently with probability priority / total."""
        total = self.total
        if not total > 0.0:
            raise ValueError("cannot sample: every priority is zero")
        indices = self._descend(rng.random(count) * total)
        # Round-off can, very rarely, walk into an empty leaf next to a boundary: redraw those.
        empty = self._nodes[indices + self._leaf0] <= 0.0
        while empty.any():
            indices[empty] = self._descend(rng.random(int(empty.sum())) * total)
            empty = self._nodes[indices + self._leaf0] <= 0.0
        return indices

    def _descend(self, mass: np.ndarray) -> np.ndarray:
        nodes = np.ones(mass.shape, np.int64)
        for _ in range(self._depth):
            left = self._nodes[2 * nodes]
            go_right = mass >= left
            mass = mass - left * go_right
            nodes = 2 * nodes + go_right
        return np.minimum(nodes - self._leaf0, self.capacity - 1)
