"""The simulated arm on the robot's ROS 2 topics: hardware-in-loop for the policy node.

`sim_bridge` makes the MuJoCo scene look like the real robot to the node (DESIGN.md "Message
contracts", the node's default topic names). Like an arm behind a ros2_control forward command
controller, it runs on the wall clock at the simulator's control period (0.1 s, divided by
`--speed`); each period it

1. applies the latest `command` if it is younger than the command timeout, else holds (zero
   motion, gripper unchanged): a command is a velocity-like target for one period, repeated
   while it is fresh and dropped when the node goes quiet, as a controller's watchdog does;
2. steps the physics one control period, exactly as `env.step` does;
3. publishes `reward` (the task's sparse reward for that step), `joint_states`, `ee_position`
   and, last, `camera/image_raw`, so a node that acts on each image has the step's reward and
   state before the image that triggers its next tick.

`episode/reset` resets the scene at the next period instead of stepping: the task's objects
are placed from a new seed (the first reset uses `--seed`, each later one the next integer,
so episode k matches `env.reset(seed=seed + k)`), then `episode/ready`, the state and the
first image of the episode go out, in that order.

Units: `command` is `(dx, dy, dz, gripper)` in robot units, what the node sends as
`action_offset + action_scale * action`: dx, dy, dz in metres per control period along the
arm's base frame (x forward, y left, z up), at most `ControlConfig.max_step_m` (0.03 m); the
gripper absolute in [-1, 1] (-1 open, +1 closed). The bridge divides by those figures
(`command_scale`), so a node with `action_scale: [0.03, 0.03, 0.03, 1.0]` (config/sim_hil.yaml)
drives the sim exactly like the gymnasium env. A command beyond that range is saturated and
counted; a wrong-length or non-finite one is refused, counted and logged once per interval,
and the arm holds.
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import itertools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from robot_node.ros import messages as msg
from robot_node.ros.dds_process import dds_port_class, spin_until_signal
from robot_node.ros.port import DEFAULT, SENSOR_DATA, Handle, Port, Qos, absolute_namespace
from robot_node.throttled_log import ThrottledLog
from sim.cli import Parser
from sim.controller import ControlConfig
from sim.env import IMAGE_SIZES
from sim.robot import STATE_JOINTS, SimRobot
from sim.tasks import TASKS

NODE_NAME = "sim_bridge"
# The node's default topic names (robot_node/params.py); relative, so they follow the namespace.
IMAGE_TOPIC = "camera/image_raw"
JOINT_STATE_TOPIC = "joint_states"
EE_POSITION_TOPIC = "ee_position"
REWARD_TOPIC = "reward"
READY_TOPIC = "episode/ready"
COMMAND_TOPIC = "command"
RESET_TOPIC = "episode/reset"
CAMERA_FRAME = "scene_camera"
BASE_FRAME = "base_link"  # the arm's base: x forward, y left, z up (the simulator's world frame)
COMMAND_QOS = Qos(reliable=True, depth=1)  # only the newest command matters, as for the node
GRIPPER_OPEN = -1.0
LOG_INTERVAL_S = 5.0  # bad commands are logged once per kind per interval (wall clock)


@dataclass(frozen=True)
class BridgeConfig:
    task: str = "pick_place"
    image_size: int = 64
    seed: int = 0  # seed of the first reset; reset k uses seed + k
    speed: float = 1.0  # simulated seconds per wall-clock second
    command_timeout_s: float = 0.15  # simulated seconds (1.5 control periods); older commands mean hold
    status_interval_s: float = 10.0  # wall clock, between status log lines


class CommandError(ValueError):
    """A command the bridge refuses; the message says why."""


def command_scale(config: ControlConfig) -> np.ndarray:
    """Robot units per normalised action unit: metres per period for dx, dy, dz; 1 for the gripper."""
    return np.array([config.max_step_m, config.max_step_m, config.max_step_m, 1.0])


def command_to_action(data: Sequence[float], scale: np.ndarray) -> tuple[np.ndarray, bool]:
    """A command in robot units as the normalised action the simulator takes, and whether it
    had to be saturated to [-1, 1]. Raises CommandError for a wrong length or NaN/inf."""
    values = np.asarray(data, dtype=float)
    if values.shape != scale.shape:
        raise CommandError(f"command has {values.size} values, expected {scale.size} (dx, dy, dz in m, gripper)")
    if not np.all(np.isfinite(values)):
        raise CommandError(f"command {values.tolist()} is not finite")
    action = values / scale
    saturated = np.clip(action, -1.0, 1.0)
    return saturated, bool(np.abs(saturated - action).max() > 1e-9)


class SimBridge:
    """A SimRobot and a task behind the port: subscriptions store, the period timer acts.

    All callbacks run on the port's one spin thread (both adapters), so the MuJoCo state and
    its GL context are only ever touched from that thread and need no locks.
    """

    def __init__(self, port: Port, config: BridgeConfig = BridgeConfig(), clock: Callable[[], float] = time.monotonic) -> None:
        self.port, self.config, self.clock = port, config, clock
        self.task = TASKS[config.task]
        self.robot = SimRobot(self.task.scene, image_size=config.image_size)
        self.scale = command_scale(self.robot.config)
        self.period_s = self.robot.config.control_period_s / config.speed  # wall clock
        self.command_timeout_s = config.command_timeout_s / config.speed
        self.counters: collections.Counter[str] = collections.Counter()
        self._log = ThrottledLog(port.logger, LOG_INTERVAL_S, clock)
        self._seeds = itertools.count(config.seed)
        self._joint_dofs = np.array([self.robot.model.joint(n).dofadr[0] for n in STATE_JOINTS])
        self._command: tuple[np.ndarray, float] | None = None  # (normalised action, arrival)
        self._gripper = GRIPPER_OPEN
        self._reset_requested = False
        self._last_period: float | None = None
        self._status_mark = (0.0, 0)
        self.episode_seed = config.seed
        self.camera = port.create_publisher(msg.Image, IMAGE_TOPIC, SENSOR_DATA)
        self.joints = port.create_publisher(msg.JointState, JOINT_STATE_TOPIC, SENSOR_DATA)
        self.ee_position = port.create_publisher(msg.PointStamped, EE_POSITION_TOPIC, SENSOR_DATA)
        self.reward = port.create_publisher(msg.Float32, REWARD_TOPIC, DEFAULT)
        self.ready = port.create_publisher(msg.Empty, READY_TOPIC, DEFAULT)
        self._handles: list[Handle] = [
            self.camera,
            self.joints,
            self.ee_position,
            self.reward,
            self.ready,
            port.create_subscription(msg.Float64MultiArray, COMMAND_TOPIC, COMMAND_QOS, self.on_command),
            port.create_subscription(msg.Empty, RESET_TOPIC, DEFAULT, self.on_reset),
        ]
        # The scene exists before anyone asks for an episode: the camera streams from the start.
        self.reset(config.seed)

    def start(self) -> None:
        """Start the control period and the status log line (the first image goes out now, which
        also creates the renderer's GL context on the thread that spins)."""
        self._publish_observation()
        self._status_mark = (self.clock(), 0)
        self._handles.append(self.port.create_timer(self.period_s, self.on_period))
        self._handles.append(self.port.create_timer(self.config.status_interval_s, self.log_status))
        self.port.logger.info(
            f"{self.task.name} at {self.config.image_size}x{self.config.image_size}, "
            f"{1 / self.robot.config.control_period_s:g} Hz x speed {self.config.speed:g} "
            f"(a period every {self.period_s * 1e3:.1f} ms), seed {self.config.seed}"
        )

    def close(self) -> None:
        """The last status line, then release the topics and the renderer."""
        self.log_status()
        for handle in self._handles:
            handle.destroy()
        self._handles = []
        self.robot.close()

    # --- subscriptions ---------------------------------------------------------------------

    def on_command(self, message: msg.Float64MultiArray) -> None:
        try:
            action, saturated = command_to_action(message.data, self.scale)
        except CommandError as exc:
            self._command = None  # hold rather than keep acting on an older command
            self.counters["refused_commands"] += 1
            self._log.warning("refused_commands", f"refused a command: {exc}; holding")
            return
        if saturated:
            self.counters["saturated_commands"] += 1
            self._log.warning(
                "saturated_commands",
                f"command {list(message.data)} exceeds the simulator's range (dx, dy, dz up to "
                f"{self.scale[0]:g} m per period, gripper in [-1, 1]): saturated. Is the node's "
                f"action_scale {self.scale.tolist()}?",
            )
        self._command = (action, self.clock())

    def on_reset(self, _message: msg.Empty) -> None:
        self._reset_requested = True

    # --- the control period ----------------------------------------------------------------

    def on_period(self) -> None:
        now = self.clock()
        if self._last_period is not None and now - self._last_period > 1.5 * self.period_s:
            self.counters["late_periods"] += round((now - self._last_period) / self.period_s) - 1
        self._last_period = now
        if self._reset_requested:
            self._reset_requested = False
            self.reset(next(self._seeds))
            self.counters["episodes"] += 1
            self.ready.publish(msg.Empty())
            self._publish_observation()
            return
        self.robot.act(self._action(now))
        self.counters["steps"] += 1
        success = self.task.success(self.robot)
        self.counters["rewarded_steps"] += int(success)
        self.reward.publish(msg.Float32(float(success)))
        self._publish_observation()

    def reset(self, seed: int) -> None:
        """The task's start state for `seed`, exactly as `env.reset(seed=seed)` makes it."""
        self.robot.reset()
        self.task.randomize(self.robot, np.random.default_rng(seed))
        self.robot.settle()
        self._command, self._gripper = None, GRIPPER_OPEN
        self.episode_seed = seed
        self.port.logger.info(f"scene reset with seed {seed}")

    def _action(self, now: float) -> np.ndarray:
        """The latest command while it is fresh, else hold: no motion, the gripper where it is."""
        if self._command is not None and now - self._command[1] <= self.command_timeout_s:
            action = self._command[0]
            self.counters["commanded_steps"] += 1
        else:
            action = np.array([0.0, 0.0, 0.0, self._gripper])
            self.counters["held_steps"] += 1
        self._gripper = float(action[3])
        return action

    def _publish_observation(self) -> None:
        """Joint states and the end effector, then the image: a node that acts on each image has
        the state (and whatever was published before this) when the image triggers its tick."""
        stamp = self.port.now()
        positions = self.robot.joint_positions().tolist()
        velocities = self.robot.data.qvel[self._joint_dofs].tolist()
        self.joints.publish(msg.JointState(list(STATE_JOINTS), positions, velocities, stamp=stamp))
        x, y, z = self.robot.ee_pos
        self.ee_position.publish(msg.PointStamped(x, y, z, stamp=stamp, frame_id=BASE_FRAME))
        pixels = self.robot.render()
        height, width, _ = pixels.shape
        self.camera.publish(msg.Image(height, width, "rgb8", 3 * width, pixels.tobytes(), stamp=stamp, frame_id=CAMERA_FRAME))

    def log_status(self) -> None:
        """Progress: the step rate against the target, episodes, rewards and refused input."""
        now, steps = self.clock(), self.counters["steps"]
        since, steps_before = self._status_mark
        self._status_mark = (now, steps)
        rate = (steps - steps_before) / max(now - since, 1e-9)
        c = self.counters
        self.port.logger.info(
            f"{steps} steps ({rate:.1f}/s, target {1 / self.period_s:.1f}/s), {c['episodes']} episodes, "
            f"{c['rewarded_steps']} rewarded steps; commands: {c['commanded_steps']} steps commanded, "
            f"{c['held_steps']} held, {c['refused_commands']} refused, {c['saturated_commands']} saturated; "
            f"{c['late_periods']} late periods"
        )


# --- command line ------------------------------------------------------------------------------


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> Parser:
    parser = Parser(prog=NODE_NAME, description="The MuJoCo arm on the robot's ROS 2 topics (hardware-in-loop).")
    parser.add_argument("--task", choices=sorted(TASKS), default=BridgeConfig.task)
    parser.add_argument("--image-size", type=int, choices=IMAGE_SIZES, default=BridgeConfig.image_size)
    parser.add_argument("--seed", type=int, default=BridgeConfig.seed, help="seed of the first reset; reset k uses seed + k")
    parser.add_argument(
        "--speed",
        type=positive_float,
        default=BridgeConfig.speed,
        help="simulated seconds per wall-clock second (default 1); a timer-driven node needs control_rate_hz = 10 x speed",
    )
    parser.add_argument(
        "--command-timeout",
        type=positive_float,
        default=BridgeConfig.command_timeout_s,
        help="simulated seconds after which a command is stale and the arm holds (default 0.15)",
    )
    parser.add_argument("--adapter", choices=("auto", "dds", "rclpy"), default="auto", help="auto: rclpy when it imports")
    parser.add_argument("--namespace", default="/", type=absolute_namespace, help="ROS namespace of the bridge's topics")
    return parser


def split_ros_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(own options, ROS arguments): `ros2 launch` appends `--ros-args ...` after a node's args."""
    if "--ros-args" not in argv:
        return argv, []
    start = argv.index("--ros-args")
    return argv[:start], argv[start:]


def main(argv: Sequence[str] | None = None) -> int:
    own, ros_args = split_ros_args(list(sys.argv[1:] if argv is None else argv))
    args = build_parser().parse_args(own)
    config = BridgeConfig(args.task, args.image_size, args.seed, args.speed, args.command_timeout)
    adapter = args.adapter
    if adapter == "auto":
        adapter = "rclpy" if importlib.util.find_spec("rclpy") is not None else "dds"
    if adapter == "rclpy":
        return _run_rclpy(config, args.namespace, ros_args)
    return _run_dds(config, args.namespace, ros_args)


def _run_dds(config: BridgeConfig, namespace: str, ros_args: list[str]) -> int:
    DdsPort = dds_port_class(NODE_NAME)
    if DdsPort is None:
        return 2
    port = DdsPort(NODE_NAME, namespace=namespace)
    if ros_args:
        port.logger.warning(f"ignoring ROS arguments {ros_args}: they need the rclpy adapter")
    bridge = SimBridge(port, config)
    return spin_until_signal(port, bridge.start, bridge.close)


def _run_rclpy(config: BridgeConfig, namespace: str, ros_args: list[str]) -> int:
    try:
        from rclpy.node import Node

        from robot_node.ros.rclpy_node import RclpyPort, init_rclpy, spin_until_signal
    except ImportError as exc:
        print(f"{NODE_NAME}: the rclpy adapter is unavailable ({exc}); source a ROS 2 install or use --adapter dds", file=sys.stderr)
        return 2
    stop = init_rclpy([NODE_NAME, *ros_args])
    node = Node(NODE_NAME, namespace=namespace)
    bridge = SimBridge(RclpyPort(node), config)
    bridge.start()
    spin_until_signal(node, stop, bridge.close)
    return 0


if __name__ == "__main__":
    sys.exit(main())
