"""The tasks: which scene, how long an episode is, how objects start, and what counts as success.

Tasks follow the paper's sparse-reward pixel tasks (COG-style pick-place and drawer grasping):
reward 1 at every step where the success test holds, else 0, and a fixed episode length (the
episode is truncated at the limit and never terminates early: an object can leave the tray
again, and a fixed horizon is what the offline data were recorded with).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sim.robot import SimRobot

OBJECT_HALF_SIZE = 0.02  # the cube's half edge, metres (sim/assets/*.xml)


class Task(Protocol):
    """What the environment needs from a task."""

    name: str  # the CLI's task name
    env_id: str  # the gymnasium id
    scene: str  # MJCF file in sim/assets/
    max_episode_steps: int

    def randomize(self, robot: SimRobot, rng: np.random.Generator) -> None:
        """Place the objects for a new episode (the arm is already at home)."""

    def success(self, robot: SimRobot) -> bool:
        """The sparse reward's test: 1 when it holds."""

    def privileged(self, robot: SimRobot) -> dict[str, np.ndarray]:
        """Object positions for scripted policies and analysis (never part of the observation)."""


def place_free_body(robot: SimRobot, joint: str, xy: np.ndarray, z: float, yaw: float) -> None:
    qpos = robot.joint_qpos(joint)
    qpos[:3] = (xy[0], xy[1], z)
    qpos[3:] = (np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2))


@dataclass(frozen=True)
class PickPlace:
    """Put the red cube into the blue tray."""

    name: str = "pick_place"
    env_id: str = "o2o_rl/PickPlace-v0"
    scene: str = "pick_place.xml"
    max_episode_steps: int = 40
    object_low: tuple[float, float] = (0.22, -0.13)  # cube start area (x, y), metres
    object_high: tuple[float, float] = (0.36, 0.0)
    max_yaw: float = 0.6  # cube start yaw, radians either way
    tray_half_inside: float = 0.068  # inner half-width of the tray (sim/assets/pick_place.xml)
    in_tray_max_z: float = 0.05  # the cube's centre below this: resting in the tray, not held above

    def randomize(self, robot: SimRobot, rng: np.random.Generator) -> None:
        xy = rng.uniform(self.object_low, self.object_high)
        place_free_body(robot, "object", xy, OBJECT_HALF_SIZE, rng.uniform(-self.max_yaw, self.max_yaw))

    def success(self, robot: SimRobot) -> bool:
        offset = robot.body_pos("object") - robot.body_pos("tray")
        return bool(np.abs(offset[:2]).max() < self.tray_half_inside and offset[2] < self.in_tray_max_z)

    def privileged(self, robot: SimRobot) -> dict[str, np.ndarray]:
        return {"object_pos": robot.body_pos("object"), "tray_pos": robot.body_pos("tray")}


@dataclass(frozen=True)
class DrawerGrasp:
    """Open the closed drawer by its handle and lift the cube that lies inside."""

    name: str = "drawer_grasp"
    env_id: str = "o2o_rl/DrawerGrasp-v0"
    scene: str = "drawer_grasp.xml"
    max_episode_steps: int = 50
    # Cube start area in the drawer's frame (x, y), metres: far enough from the drawer's front
    # for a finger to fit, near enough to be reachable once the drawer is pulled out.
    object_low: tuple[float, float] = (-0.045, -0.025)
    object_high: tuple[float, float] = (0.045, 0.01)
    max_yaw: float = 0.6
    drawer_floor_z: float = 0.016  # top of the drawer's floor (sim/assets/drawer_grasp.xml)
    lifted_z: float = 0.09  # the cube's centre above this: grasped and lifted out of the drawer

    def randomize(self, robot: SimRobot, rng: np.random.Generator) -> None:
        robot.joint_qpos("drawer")[:] = 0.0
        xy = robot.body_pos("drawer")[:2] + rng.uniform(self.object_low, self.object_high)
        place_free_body(robot, "object", xy, self.drawer_floor_z + OBJECT_HALF_SIZE, rng.uniform(-self.max_yaw, self.max_yaw))

    def success(self, robot: SimRobot) -> bool:
        return bool(robot.body_pos("object")[2] > self.lifted_z)

    def privileged(self, robot: SimRobot) -> dict[str, np.ndarray]:
        return {
            "object_pos": robot.body_pos("object"),
            "handle_pos": robot.site_pos("handle"),
            "drawer_opening": robot.joint_qpos("drawer").copy(),
        }


TASKS: dict[str, Task] = {task.name: task for task in (PickPlace(), DrawerGrasp())}
