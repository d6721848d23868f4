"""Scripted exploration policies with noise: the paper's pick, place, open and grasp attempts.

A script is a list of phases. Each phase steers the grasp point towards a target computed from
the privileged object positions in `info` (never from the pixels), holds the gripper open or
closed, and hands over to the next phase when its condition holds. Noise comes from three
places, so that attempts sometimes fail the way real ones do: a per-episode grasp offset, a
Gaussian on every motion command, and a per-episode destination drawn at random for the
attempts that stop short of the task (a pick attempt lifts the cube and drops it somewhere;
an open attempt opens the drawer and wanders off).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sim.controller import ControlConfig

Info = dict[str, np.ndarray]
OPEN, CLOSE = -1.0, 1.0
HOVER_Z = 0.10  # travel height above objects, metres
CARRY_Z = 0.13  # carrying height: the cube clears the tray's and the drawer's walls


@dataclass(frozen=True)
class Phase:
    name: str
    target: Callable[[Info], np.ndarray]  # where the grasp point should go
    gripper: float  # OPEN or CLOSE
    done: Callable[[Info, int], bool]  # (info, steps spent in this phase) -> move on


@dataclass(frozen=True)
class ScriptNoise:
    motion_std: float = 0.3  # Gaussian on each normalised dx, dy, dz
    grasp_offset_std_m: float = 0.01  # per-episode error of the grasp point, each of x and y


ATTEMPTS = {"pick_place": ("place", "pick"), "drawer_grasp": ("grasp", "open")}  # full task first


def xy_dist(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a[:2] - b[:2]))


def after(steps: int) -> Callable[[Info, int], bool]:
    return lambda info, n: n >= steps


def hold(info: Info) -> np.ndarray:
    return info["ee_pos"]


def random_point(rng: np.random.Generator, config: ControlConfig) -> np.ndarray:
    low, high = np.array(config.workspace_low), np.array(config.workspace_high)
    point = rng.uniform(low, high)
    point[2] = rng.uniform(HOVER_Z, CARRY_Z)
    return point


def grasp_phases(
    obj: Callable[[Info], np.ndarray], offset: np.ndarray, gripper_open: float = OPEN, hover_z: float = HOVER_Z
) -> list[Phase]:
    """Reach above the object, descend, close, lift: a top-down grasp."""
    aim = lambda info: obj(info)[:2] + offset  # noqa: E731
    return [
        Phase("reach", lambda i: np.r_[aim(i), hover_z], gripper_open, lambda i, n: xy_dist(i["ee_pos"], aim(i)) < 0.012 or n >= 10),
        Phase("descend", lambda i: np.r_[aim(i), obj(i)[2]], gripper_open, lambda i, n: i["ee_pos"][2] < obj(i)[2] + 0.008 or n >= 6),
        Phase("close", lambda i: np.r_[aim(i), obj(i)[2]], CLOSE, after(2)),
        Phase("lift", lambda i: np.r_[i["ee_pos"][:2], CARRY_Z], CLOSE, lambda i, n: i["ee_pos"][2] > CARRY_Z - 0.02 or n >= 6),
    ]


def carry_and_release(destination: Callable[[Info], np.ndarray]) -> list[Phase]:
    return [
        Phase("carry", destination, CLOSE, lambda i, n: xy_dist(i["ee_pos"], destination(i)) < 0.02 or n >= 12),
        Phase("release", hold, OPEN, after(2)),
        Phase("wait", hold, OPEN, after(10**6)),
    ]


def pick_place_phases(attempt: str, rng: np.random.Generator, noise: ScriptNoise, config: ControlConfig) -> list[Phase]:
    offset = rng.normal(0.0, noise.grasp_offset_std_m, 2)
    phases = grasp_phases(lambda i: i["object_pos"], offset)
    if attempt == "place":
        return phases + carry_and_release(lambda i: np.r_[i["tray_pos"][:2], CARRY_Z])
    point = random_point(rng, config)
    return phases + carry_and_release(lambda i: point)


def drawer_grasp_phases(attempt: str, rng: np.random.Generator, noise: ScriptNoise, config: ControlConfig) -> list[Phase]:
    handle_offset = rng.normal(0.0, noise.grasp_offset_std_m, 2)
    pull = lambda i: np.r_[i["handle_pos"][:2] + handle_offset + (0.0, -0.05), i["handle_pos"][2]]  # noqa: E731
    phases = grasp_phases(lambda i: i["handle_pos"], handle_offset, gripper_open=-0.4)[:3] + [
        Phase("pull", pull, CLOSE, lambda i, n: i["drawer_opening"][0] > 0.13 or n >= 8),
        Phase("let go", hold, OPEN, after(1)),
        # Up and over the drawer's front panel, which the fingers would otherwise push shut.
        Phase("rise", lambda i: np.r_[i["ee_pos"][:2], CARRY_Z], OPEN, lambda i, n: i["ee_pos"][2] > CARRY_Z - 0.015 or n >= 4),
    ]
    if attempt == "grasp":
        offset = rng.normal(0.0, noise.grasp_offset_std_m, 2)
        grasp = grasp_phases(lambda i: i["object_pos"], offset, hover_z=CARRY_Z)
        return phases + grasp + [Phase("hold", hold, CLOSE, after(10**6))]
    point = random_point(rng, config)
    return phases + [Phase("wander", lambda i: point, OPEN, after(10**6))]


PHASES = {"pick_place": pick_place_phases, "drawer_grasp": drawer_grasp_phases}


class ScriptedPolicy:
    """Acts from `info` (privileged positions); `reset` draws the episode's noise and plan."""

    def __init__(
        self,
        task: str,
        rng: np.random.Generator,
        noise: ScriptNoise = ScriptNoise(),
        config: ControlConfig = ControlConfig(),
    ) -> None:
        if task not in PHASES:
            raise ValueError(f"no scripted policy for task {task!r}")
        self.task, self.rng, self.noise, self.config = task, rng, noise, config
        self.phases: list[Phase] = []
        self.index = self.steps = 0

    def reset(self, attempt: str) -> None:
        if attempt not in ATTEMPTS[self.task]:
            raise ValueError(f"{self.task} has attempts {ATTEMPTS[self.task]}, not {attempt!r}")
        self.phases = PHASES[self.task](attempt, self.rng, self.noise, self.config)
        self.index = self.steps = 0

    @property
    def phase(self) -> str:
        return self.phases[self.index].name

    def act(self, info: Info) -> np.ndarray:
        while self.index < len(self.phases) - 1 and self.phases[self.index].done(info, self.steps):
            self.index, self.steps = self.index + 1, 0
        phase = self.phases[self.index]
        self.steps += 1
        motion = (phase.target(info) - info["ee_pos"]) / self.config.max_step_m
        motion = motion + self.rng.normal(0.0, self.noise.motion_std, 3)
        return np.clip(np.r_[motion, phase.gripper], -1.0, 1.0).astype(np.float32)
