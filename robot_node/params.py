"""The node's parameters: names, defaults and descriptions in one dataclass.

Both adapters declare exactly these (rclpy with a ParameterDescriptor each, the DDS adapter from
the same `ros__parameters` YAML), and the launch-file test checks config/robot.yaml against them.
Parameters are read when the node is configured. Per-dimension action parameters take either one
value for every dimension or one per dimension of the model's action spec.
"""

from __future__ import annotations

import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import numpy as np

from robot_node.protocol import CODECS
from robot_node.ros.port import TOPIC_NAME, ParamSpec
from robot_node.spec import ActionSpec

TRIGGERS = ("timer", "image")
# A robot id names the robot on the link, in episode ids and as its spool directory.
ROBOT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A parameter value the node cannot run with; the message names the parameter."""


def _p(default: Any, description: str) -> Any:
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"description": description})
    return field(default=default, metadata={"description": description})


@dataclass
class NodeParams:
    # Policy
    model_path: str = _p("", "ONNX policy loaded and checked at configure (required).")
    explore: bool = _p(True, "Sample from the policy's Gaussian (fine-tuning) instead of acting on its mean.")
    seed: int = _p(-1, "Seed of the exploration noise; -1 draws one at start-up.")
    inference_threads: int = _p(2, "onnxruntime intra-op threads.")
    max_model_mb: float = _p(256.0, "Refuse models larger than this (MiB).")
    # Control loop
    control_rate_hz: float = _p(10.0, "Rate of the control timer.")
    trigger: str = _p(
        "timer", "timer: act at control_rate_hz on the newest image; image: act on every new image (the timer then only watches for staleness)."
    )
    max_image_age_s: float = _p(
        0.0, "Hold and report STALE when the newest image (or joint state, if the policy uses state) is older than this; 0 means two control periods."
    )
    # Actions and safety (normalised units unless stated)
    action_scale: list[float] = _p([1.0], "Robot command = action_offset + action_scale * action, per dimension.")
    action_offset: list[float] = _p([0.0], "See action_scale (robot units).")
    action_min: list[float] = _p([-1.0], "Per-dimension lower clip of the action.")
    action_max: list[float] = _p([1.0], "Per-dimension upper clip of the action.")
    max_action_change: list[float] = _p([1.0], "Largest change of each action dimension from one tick to the next.")
    hold_last_dims: list[str] = _p(
        ["gripper"], "Action dimensions that hold their last value when the node holds (others go to 0); [''] for none."
    )
    workspace_enabled: bool = _p(False, "Keep the end effector inside the workspace box (needs ee_position_topic).")
    workspace_axes: list[str] = _p(["dx", "dy", "dz"], "Action dimensions that move the end effector along x, y, z.")
    workspace_min: list[float] = _p([-0.5, -0.5, 0.0], "Workspace box lower corner (x, y, z), in the end-effector frame's units.")
    workspace_max: list[float] = _p([0.5, 0.5, 0.5], "Workspace box upper corner (x, y, z).")
    # Topics
    image_topic: str = _p("camera/image_raw", "sensor_msgs/Image in (rgb8 or bgr8), best effort.")
    joint_state_topic: str = _p("joint_states", "sensor_msgs/JointState in; the policy's state by joint name.")
    ee_position_topic: str = _p("ee_position", "geometry_msgs/PointStamped in: end-effector position for the workspace box.")
    command_topic: str = _p("command", "std_msgs/Float64MultiArray out: forward command, reliable, depth 1.")
    reward_topic: str = _p("reward", "std_msgs/Float32 in: reward of the last action.")
    reset_topic: str = _p("episode/reset", "std_msgs/Empty out: the node asks for the scene to be reset.")
    ready_topic: str = _p("episode/ready", "std_msgs/Empty in: the scene is reset, a new episode may start.")
    estop_topic: str = _p("estop", "std_msgs/Bool in, latched: true holds the arm until false is received.")
    diagnostics_topic: str = _p("/diagnostics", "diagnostic_msgs/DiagnosticArray out.")
    diagnostics_rate_hz: float = _p(1.0, "Rate of /diagnostics.")
    # Episodes
    max_episode_steps: int = _p(40, "Time limit: the episode is truncated after this many steps.")
    success_reward: float = _p(1.0, "A reward at or above this is a success.")
    terminate_on_success: bool = _p(
        False, "A success ends the episode as terminal; off by default, as the paper's (and the simulator's) tasks run to their time limit."
    )
    require_ready: bool = _p(True, "Wait for episode/ready after each reset request before acting.")
    reset_retry_s: float = _p(2.0, "Repeat the reset request this often while waiting for ready.")
    # Trainer link
    trainer_endpoint: str = _p("", "Trainer address (e.g. tcp://trainer:5555); empty runs without a trainer.")
    robot_id: str = _p("robot", "This robot's name on the link, in episode ids and in its spool directory.")
    secret_key_file: str = _p(
        "", "This robot's CURVE key pair (NAME.key_secret from o2o-keys generate); needed with trainer_endpoint unless insecure."
    )
    trainer_key_file: str = _p(
        "", "The trainer's CURVE public key (its NAME.key): the node only talks to the trainer holding the matching secret."
    )
    insecure: bool = _p(False, "Run the link without CURVE (no authentication, no encryption): trusted bench networks only; warned at start-up.")
    spool_dir: str = _p(
        "~/.ros/o2o_rl/spool", "Transitions wait on disk in <spool_dir>/<robot_id> until the trainer acknowledges them; kept across restarts."
    )
    spool_max_mb: float = _p(1024.0, "Spool size bound (MiB); when full the oldest transitions are dropped, counted and warned.")
    spool_sync: bool = _p(False, "fsync the spool on every write: survives power loss, not only a node restart, at the cost of disk latency.")
    image_codec: str = _p("png", "How images travel to the trainer: png (lossless), jpeg (lossy, jpeg_quality) or raw.")
    jpeg_quality: int = _p(90, "JPEG quality 1-100, with image_codec jpeg.")
    link_heartbeat_s: float = _p(0.5, "Heartbeat period of the trainer link.")
    link_timeout_s: float = _p(
        3.0, "Silence after which the trainer counts as lost: diagnostics say disconnected, the link reconnects by itself."
    )
    # rclpy adapter
    autostart: bool = _p(True, "rclpy: configure and activate at start-up instead of waiting for lifecycle transitions.")

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> NodeParams:
        params = cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})
        params.validate()
        return params

    def validate(self) -> None:
        """Checks that need no model; per-dimension ones happen in `per_dim`."""
        if not self.model_path:
            raise ConfigError("model_path is empty: give the ONNX policy to run")
        for name in ("control_rate_hz", "diagnostics_rate_hz", "reset_retry_s", "max_model_mb"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_image_age_s < 0:
            raise ConfigError(f"max_image_age_s must be >= 0, got {self.max_image_age_s}")
        for name in (f.name for f in fields(self) if f.name.endswith("_topic")):
            if not TOPIC_NAME.fullmatch(getattr(self, name)):
                raise ConfigError(
                    f"{name} {getattr(self, name)!r} is not a ROS topic name: letters, digits and '_' "
                    "in tokens that do not start with a digit, joined by single '/' (no '~' or '{}')"
                )
        if self.trigger not in TRIGGERS:
            raise ConfigError(f"trigger must be one of {TRIGGERS}, got {self.trigger!r}")
        if self.max_episode_steps < 1 or self.inference_threads < 1:
            raise ConfigError("max_episode_steps and inference_threads must be at least 1")
        if len(self.workspace_axes) != 3 or len(self.workspace_min) != 3 or len(self.workspace_max) != 3:
            raise ConfigError("workspace_axes, workspace_min and workspace_max take exactly 3 values (x, y, z)")
        if any(lo > hi for lo, hi in zip(self.workspace_min, self.workspace_max)):
            raise ConfigError(f"workspace_min {self.workspace_min} exceeds workspace_max {self.workspace_max}")
        self._validate_link()

    def _validate_link(self) -> None:
        if not ROBOT_ID.match(self.robot_id):
            raise ConfigError(f"robot_id {self.robot_id!r}: use letters, digits, '_', '.', '-' (at most 64, no leading punctuation)")
        if self.image_codec not in CODECS:
            raise ConfigError(f"image_codec must be one of {CODECS}, got {self.image_codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")
        for name in ("spool_max_mb", "link_heartbeat_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.link_timeout_s > self.link_heartbeat_s:
            raise ConfigError(f"link_timeout_s ({self.link_timeout_s}) must exceed link_heartbeat_s ({self.link_heartbeat_s})")

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    @property
    def image_age_limit_s(self) -> float:
        return self.max_image_age_s or 2.0 * self.period_s

    def per_dim(self, name: str, action_spec: ActionSpec) -> np.ndarray:
        """A per-dimension parameter as float64 [A]: one value broadcast, or one per action name."""
        values = getattr(self, name)
        if len(values) not in (1, action_spec.dim):
            raise ConfigError(
                f"{name} has {len(values)} values; give 1 or {action_spec.dim} (one per {list(action_spec.names)})"
            )
        array = np.broadcast_to(np.asarray(values, dtype=np.float64), (action_spec.dim,)).copy()
        if not np.all(np.isfinite(array)):
            raise ConfigError(f"{name} must be finite, got {values}")
        return array

    def dim_indices(self, name: str, action_spec: ActionSpec) -> list[int]:
        """Indices of the action dimensions a name-list parameter lists ('' entries mean none)."""
        names = [n for n in getattr(self, name) if n]
        unknown = [n for n in names if n not in action_spec.names]
        if unknown:
            raise ConfigError(f"{name} names {unknown}, which the action spec {list(action_spec.names)} lacks")
        return [action_spec.names.index(n) for n in names]


PARAM_SPECS: tuple[ParamSpec, ...] = tuple(
    ParamSpec(f.name, f.default if f.default_factory is MISSING else f.default_factory(), f.metadata["description"])
    for f in fields(NodeParams)
)
