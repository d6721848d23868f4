"""End-effector controller: a normalised (dx, dy, dz, gripper) action to joint position targets.

What a Cartesian teleop or delta-action interface on a real arm does, once per control period:
move a Cartesian target by the action (metres at |a| = 1), keep it in the workspace box and
close to where the hand really is, then solve damped-least-squares IK on the grasp site's
Jacobian for the joint targets that put the grasp point there with the gripper pointing
straight down and its fingers opening along world y. The servos in the scene track the
targets. The gripper action is absolute: -1 fully open, +1 closed, linear in between.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

ARM_JOINTS = ("waist", "shoulder", "elbow", "wrist_angle", "wrist_rotate")
GRIPPER_JOINT = "finger_left"  # the left finger's travel: half the opening, 0 (closed) to 0.04 m
GRASP_SITE = "grasp"

# The grasp site's frame when the gripper points down: tool axis (site x) along world -z,
# fingers opening along world y (site y), site z along world x.
TOOL_DOWN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class ControlConfig:
    """Action scaling and limits; the defaults match the robot node's 10 Hz control rate."""

    control_period_s: float = 0.1
    max_step_m: float = 0.03  # end-effector displacement per control period at |a| = 1
    workspace_low: tuple[float, float, float] = (0.14, -0.16, 0.018)
    workspace_high: tuple[float, float, float] = (0.44, 0.24, 0.22)
    max_lead_m: float = 0.05  # how far the target may run ahead of the measured hand (anti-windup)
    gripper_open_m: float = 0.04  # finger travel at gripper = -1
    ik_damping: float = 0.03
    ik_iterations: int = 8
    ik_tolerance_m: float = 5e-4


class EndEffectorController:
    """Holds the Cartesian target between steps and turns actions into actuator targets."""

    def __init__(self, model: mujoco.MjModel, config: ControlConfig = ControlConfig()) -> None:
        self.model = model
        self.config = config
        self._scratch = mujoco.MjData(model)  # IK runs forward kinematics here, not on the live state
        self._site = model.site(GRASP_SITE).id
        self._qpos_ids = np.array([model.joint(n).qposadr[0] for n in ARM_JOINTS])
        self._dof_ids = np.array([model.joint(n).dofadr[0] for n in ARM_JOINTS])
        ranges = np.array([model.joint(n).range for n in ARM_JOINTS])
        self._q_low, self._q_high = ranges[:, 0], ranges[:, 1]
        self._low = np.array(config.workspace_low)
        self._high = np.array(config.workspace_high)
        self._jacp = np.zeros((3, model.nv))
        self._jacr = np.zeros((3, model.nv))
        self.target = np.zeros(3)
        self.arm_targets = np.zeros(len(ARM_JOINTS))

    def reset(self, arm_q: np.ndarray) -> None:
        """Start from a joint configuration: the target is where the hand is."""
        self.arm_targets = np.asarray(arm_q, float).copy()
        self.target = self.forward(self.arm_targets)[0]

    def step(self, action: np.ndarray, ee_pos: np.ndarray) -> tuple[np.ndarray, float]:
        """Joint targets for the arm and the finger target for one normalised action."""
        a = np.clip(np.asarray(action, float), -1.0, 1.0)
        c = self.config
        target = np.clip(self.target + a[:3] * c.max_step_m, self._low, self._high)
        self.target = ee_pos + np.clip(target - ee_pos, -c.max_lead_m, c.max_lead_m)
        self.arm_targets = self.solve(self.target, self.arm_targets)
        finger = c.gripper_open_m * (1.0 - a[3]) / 2.0
        return self.arm_targets, finger

    def forward(self, arm_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Grasp-site position and orientation for arm joint positions."""
        d = self._scratch
        d.qpos[self._qpos_ids] = arm_q
        mujoco.mj_kinematics(self.model, d)
        mujoco.mj_comPos(self.model, d)
        return d.site_xpos[self._site].copy(), d.site_xmat[self._site].reshape(3, 3).copy()

    def solve(self, position: np.ndarray, arm_q: np.ndarray) -> np.ndarray:
        """Damped least squares from `arm_q` towards `position` with the tool pointing down."""
        c = self.config
        q = np.asarray(arm_q, float).copy()
        for _ in range(c.ik_iterations):
            pos, rot = self.forward(q)
            pos_err = position - pos
            # Rotation error as a vector: half the sum of column cross products (small angles).
            rot_err = 0.5 * np.cross(rot.T, TOOL_DOWN.T).sum(axis=0)
            if np.abs(pos_err).max() < c.ik_tolerance_m and np.abs(rot_err).max() < 1e-3:
                break
            mujoco.mj_jacSite(self.model, self._scratch, self._jacp, self._jacr, self._site)
            jac = np.vstack([self._jacp[:, self._dof_ids], self._jacr[:, self._dof_ids]])
            err = np.concatenate([pos_err, rot_err])
            q += jac.T @ np.linalg.solve(jac @ jac.T + c.ik_damping**2 * np.eye(6), err)
            q = np.clip(q, self._q_low, self._q_high)
        return q
