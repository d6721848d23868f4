"""The gymnasium environment around a SimRobot and a task (registered as `o2o_rl/...` by `import sim`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from robot_node.spec import ActionSpec, ObservationSpec
from sim.robot import STATE_JOINTS, SimRobot
from sim.tasks import TASKS

IMAGE_SIZES = (64, 84, 128)


class ManipulationEnv(gym.Env):
    """Pixels and joint positions in, normalised (dx, dy, dz, gripper) out, sparse reward.

    Observation: {"pixels": uint8 [H, W, 3] RGB from the scene camera, "state": float32 joint
    positions named by `observation_spec.state_names`}. info carries "success" and "ee_pos"
    (the grasp point in metres, world frame) every step, plus the task's privileged object
    positions for scripted policies and analysis.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: str = "pick_place", image_size: int = 64, render_mode: str | None = None) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size must be one of {IMAGE_SIZES}, got {image_size}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task = TASKS[task]
        self.render_mode = render_mode
        self.robot = SimRobot(self.task.scene, image_size=image_size)
        self.observation_spec = ObservationSpec(image_shape=(image_size, image_size, 3), state_names=STATE_JOINTS)
        self.action_spec = ActionSpec()
        self.observation_space = gym.spaces.Dict(
            {
                "pixels": gym.spaces.Box(0, 255, self.observation_spec.image_shape, np.uint8),
                "state": gym.spaces.Box(*self.robot.joint_limits(), dtype=np.float32),
            }
        )
        spec = self.action_spec
        self.action_space = gym.spaces.Box(spec.low, spec.high, (spec.dim,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self.robot.reset()
        self.task.randomize(self.robot, self.np_random)
        self.robot.settle()
        return self._observe(), self._info()

    def step(self, action: np.ndarray) -> tuple[dict, float, bool, bool, dict]:
        self.robot.act(action)
        info = self._info()
        # Never terminates: the time limit (TimeLimit wrapper from the registry) ends episodes.
        return self._observe(), float(info["success"]), False, False, info

    def render(self) -> np.ndarray | None:
        return self.robot.render() if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self.robot.close()

    def _observe(self) -> dict[str, np.ndarray]:
        return {"pixels": self.robot.render(), "state": self.robot.joint_positions()}

    def _info(self) -> dict[str, Any]:
        return {
            "success": self.task.success(self.robot),
            "ee_pos": self.robot.ee_pos.astype(np.float32),
            **self.task.privileged(self.robot),
        }
