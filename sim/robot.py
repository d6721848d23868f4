"""The simulated robot: physics, controller, camera and joint states, without gymnasium.

This is the piece a ROS bridge drives the same way the gymnasium environment does: apply a
normalised action, advance one control period, render the camera, read joint positions by
name. Tasks (sim/tasks.py) add their objects' randomisation and success test on top.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import mujoco
import numpy as np

from sim.controller import ARM_JOINTS, GRASP_SITE, GRIPPER_JOINT, ControlConfig, EndEffectorController

ASSETS = Path(__file__).resolve().parent / "assets"
CAMERA = "scene"
# What the robot publishes as proprioception (sensor_msgs/JointState names and positions).
STATE_JOINTS = (*ARM_JOINTS, GRIPPER_JOINT)
# Where every episode starts: the grasp point 0.18 m above the table, gripper open.
HOME_POSITION = np.array([0.22, 0.0, 0.18])


class SimRobot:
    """One MuJoCo scene: an arm with a gripper, a camera, and whatever objects the task adds."""

    def __init__(self, scene: str, image_size: int = 64, config: ControlConfig = ControlConfig()) -> None:
        self.model = mujoco.MjModel.from_xml_path(str(ASSETS / scene))
        self.data = mujoco.MjData(self.model)
        self.image_size = int(image_size)
        self.config = config
        self.controller = EndEffectorController(self.model, config)
        self.n_substeps = round(config.control_period_s / self.model.opt.timestep)
        self._state_qpos = np.array([self.model.joint(n).qposadr[0] for n in STATE_JOINTS])
        self._arm_qpos = self._state_qpos[: len(ARM_JOINTS)]
        self._site = self.model.site(GRASP_SITE).id
        self._arm_actuators = np.array([self.model.actuator(n).id for n in ARM_JOINTS])
        self._gripper_actuator = self.model.actuator("gripper").id
        self.home_q = self._solve_home()
        self._renderer: mujoco.Renderer | None = None
        self._release_renderer: weakref.finalize | None = None

    def _solve_home(self) -> np.ndarray:
        # Start the solver from a bent elbow so that it lands on the elbow-up branch.
        q = np.array([0.0, 0.2, 1.2, 0.2, 0.0])
        for _ in range(10):
            q = self.controller.solve(HOME_POSITION, q)
        return q

    def reset(self) -> None:
        """Arm at home with the gripper open, everything else at the scene's default pose."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = self.home_q
        self.data.ctrl[self._arm_actuators] = self.home_q
        self.data.ctrl[self._gripper_actuator] = self.config.gripper_open_m
        for finger in ("finger_left", "finger_right"):
            self.joint_qpos(finger)[:] = self.config.gripper_open_m
        self.controller.reset(self.home_q)
        mujoco.mj_forward(self.model, self.data)

    def act(self, action: np.ndarray) -> None:
        """Apply one normalised action and advance one control period."""
        action = np.asarray(action, dtype=float)
        if action.shape != (4,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 4 finite numbers (dx, dy, dz, gripper), got {action!r}")
        arm, finger = self.controller.step(action, self.ee_pos)
        self.data.ctrl[self._arm_actuators] = arm
        self.data.ctrl[self._gripper_actuator] = finger
        mujoco.mj_step(self.model, self.data, self.n_substeps)

    def settle(self, seconds: float = 0.3) -> None:
        """Let objects come to rest after they were placed (the arm holds its targets)."""
        mujoco.mj_step(self.model, self.data, round(seconds / self.model.opt.timestep))

    def render(self) -> np.ndarray:
        """The camera image, uint8 [H, W, 3] RGB."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.image_size, self.image_size)
            # Free the GL context before interpreter shutdown even if nobody calls close():
            # OpenGL's bindings cannot do it once Python is tearing its modules down.
            self._release_renderer = weakref.finalize(self, self._renderer.close)
        self._renderer.update_scene(self.data, camera=CAMERA)
        return self._renderer.render()

    def joint_limits(self) -> tuple[np.ndarray, np.ndarray]:
        """Bounds of STATE_JOINTS: the joint ranges widened by a tenth, since joint limits in
        MuJoCo (as on a real arm) are soft and a pushed joint can pass them slightly."""
        ranges = np.array([self.model.joint(n).range for n in STATE_JOINTS])
        pad = 0.1 * (ranges[:, 1] - ranges[:, 0])
        return (ranges[:, 0] - pad).astype(np.float32), (ranges[:, 1] + pad).astype(np.float32)

    def joint_positions(self) -> np.ndarray:
        """Positions of STATE_JOINTS, float32: radians for the arm, metres for the finger."""
        return self.data.qpos[self._state_qpos].astype(np.float32)

    @property
    def ee_pos(self) -> np.ndarray:
        """The grasp point (between the finger pads) in the world frame, metres."""
        return self.data.site_xpos[self._site].copy()

    def body_pos(self, name: str) -> np.ndarray:
        return self.data.body(name).xpos.copy()

    def site_pos(self, name: str) -> np.ndarray:
        return self.data.site(name).xpos.copy()

    def joint_qpos(self, name: str) -> np.ndarray:
        """A view of the joint's qpos, to read or to set before `settle`."""
        return self.data.joint(name).qpos

    def close(self) -> None:
        if self._release_renderer is not None:
            self._release_renderer()
        self._renderer = self._release_renderer = None
