"""Safety limits, applied by the node to every action before it leaves the robot.

The policy proposes; the node disposes. Rules, in order:
1. non-finite output (NaN/inf) -> hold;
2. per-dimension clip to [action_min, action_max];
3. rate limit: each dimension moves at most max_action_change from the last sent action;
4. workspace box: the end effector, moved by the commanded displacement, stays inside the box
   (a component that would leave it is cut to the boundary; one already outside may only move
   back in). Skipped when no end-effector position is available.
Hold sends 0 on every dimension except those in hold_last_dims, which keep their last value
(a gripper keeps its grip). Hold is immediate: it is not rate limited.

Actions are in normalised units; `command` maps them to robot units (offset + scale * action).
The workspace box assumes the workspace axes command Cartesian displacements per tick in the
units of the end-effector position (metres for a real arm).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_node.params import ConfigError, NodeParams
from robot_node.spec import ActionSpec

CLIPPED = "clipped"
RATE_LIMITED = "rate_limited"
WORKSPACE = "workspace"
NONFINITE = "nonfinite"


@dataclass(frozen=True)
class Workspace:
    axes: tuple[int, int, int]  # action dimensions that displace the end effector along x, y, z
    low: np.ndarray  # [3]
    high: np.ndarray  # [3]


@dataclass(frozen=True)
class SafetyLimits:
    low: np.ndarray  # [A], normalised
    high: np.ndarray
    max_change: np.ndarray
    hold_last: np.ndarray  # bool [A]
    scale: np.ndarray  # [A], robot units per normalised unit
    offset: np.ndarray
    workspace: Workspace | None

    @classmethod
    def from_params(cls, params: NodeParams, action_spec: ActionSpec) -> SafetyLimits:
        low, high = params.per_dim("action_min", action_spec), params.per_dim("action_max", action_spec)
        if np.any(low > high) or np.any(low < action_spec.low) or np.any(high > action_spec.high):
            raise ConfigError(
                f"action_min {low.tolist()} / action_max {high.tolist()} must be ordered and inside the "
                f"action spec bounds [{action_spec.low}, {action_spec.high}]"
            )
        max_change = params.per_dim("max_action_change", action_spec)
        if np.any(max_change <= 0):
            raise ConfigError(f"max_action_change must be positive, got {max_change.tolist()}")
        if not action_spec.low <= 0.0 <= action_spec.high:
            raise ConfigError(f"hold sends 0, which lies outside the action bounds [{action_spec.low}, {action_spec.high}]")
        scale = params.per_dim("action_scale", action_spec)
        if np.any(scale == 0):
            raise ConfigError(f"action_scale must be non-zero, got {scale.tolist()}")
        hold_last = np.zeros(action_spec.dim, bool)
        hold_last[params.dim_indices("hold_last_dims", action_spec)] = True
        workspace = None
        if params.workspace_enabled:
            axes = params.dim_indices("workspace_axes", action_spec)
            workspace = Workspace(tuple(axes), np.asarray(params.workspace_min), np.asarray(params.workspace_max))
        return cls(low, high, max_change, hold_last, scale, params.per_dim("action_offset", action_spec), workspace)


class SafetyFilter:
    """Holds the last sent action, which the rate limit and hold refer to."""

    def __init__(self, limits: SafetyLimits, action_spec: ActionSpec) -> None:
        self.limits, self.action_spec = limits, action_spec
        self.last: np.ndarray | None = None  # last action sent; None before the first one

    def hold(self) -> np.ndarray | None:
        """The holding action, or None before any action was sent (the arm was never commanded)."""
        if self.last is None:
            return None
        action = np.where(self.limits.hold_last, self.last, 0.0).astype(np.float32)
        self.last = action
        return action

    def forget(self) -> None:
        """The arm was reset by something else: until the next action, hold sends nothing and the
        rate limit has no reference, as before the first action."""
        self.last = None

    def apply(self, proposed: np.ndarray, ee_position: np.ndarray | None) -> tuple[np.ndarray | None, list[str]]:
        """(action to send, rules that fired). A non-finite proposal turns into hold."""
        if not np.all(np.isfinite(proposed)):
            return self.hold(), [NONFINITE]
        limits, events = self.limits, []
        action = np.asarray(proposed, dtype=np.float64)
        clipped = np.clip(action, limits.low, limits.high)
        if not np.array_equal(clipped, action):
            events.append(CLIPPED)
        if self.last is not None:
            limited = np.clip(clipped, self.last - limits.max_change, self.last + limits.max_change)
            if not np.array_equal(limited, clipped):
                events.append(RATE_LIMITED)
            clipped = limited
        if limits.workspace is not None and ee_position is not None:
            boxed = self._keep_in_box(clipped, ee_position, limits.workspace)
            if not np.array_equal(boxed, clipped):
                events.append(WORKSPACE)
            clipped = boxed
        action = np.clip(clipped, self.action_spec.low, self.action_spec.high).astype(np.float32)
        self.last = action
        return action, events

    def command(self, action: np.ndarray) -> list[float]:
        """Robot units, as the forward command controller takes them."""
        return (self.limits.offset + self.limits.scale * action).tolist()

    def _keep_in_box(self, action: np.ndarray, position: np.ndarray, box: Workspace) -> np.ndarray:
        axes = list(box.axes)
        scale, offset = self.limits.scale[axes], self.limits.offset[axes]
        displacement = offset + scale * action[axes]
        # Allowed displacement keeps the target inside; from outside, only moves back in (or none).
        lowest = np.minimum(box.low - position, 0.0)
        highest = np.maximum(box.high - position, 0.0)
        safe = np.clip(displacement, lowest, highest)
        out = action.copy()
        out[axes] = (safe - offset) / scale
        return out
