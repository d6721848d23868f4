"""The port the node logic talks through: typed topics with QoS, timers, parameters, a logger.

Two adapters implement it: `robot_node.ros.dds` (Cyclone DDS from PyPI, no ROS install) and
`robot_node.ros.rclpy_node` (rclpy, on a ROS 2 system). The logic never imports either, so the
same node runs under `ros2 launch` and in a plain virtualenv.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

M = TypeVar("M")


@dataclass(frozen=True)
class Qos:
    """The three QoS knobs that decide whether two ROS 2 endpoints match."""

    reliable: bool
    depth: int
    transient_local: bool = False


# What rclpy calls qos_profile_sensor_data, its default profile, and a latched topic.
SENSOR_DATA = Qos(reliable=False, depth=5)
DEFAULT = Qos(reliable=True, depth=10)
LATCHED = Qos(reliable=True, depth=1, transient_local=True)


@dataclass(frozen=True)
class ParamSpec:
    """A declared parameter: its type is the type of its default."""

    name: str
    default: Any
    description: str


class Logger(Protocol):
    def debug(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...
    def warning(self, message: str) -> None: ...
    def error(self, message: str) -> None: ...


class Publisher(Protocol[M]):
    def publish(self, msg: M) -> None: ...
    def destroy(self) -> None: ...


class Handle(Protocol):
    """A subscription or timer; destroying it stops its callbacks."""

    def destroy(self) -> None: ...


class Port(Protocol):
    @property
    def logger(self) -> Logger: ...

    def now(self) -> float:
        """The node's clock (ROS time), in seconds; used for message stamps."""

    def declare_parameters(self, specs: Sequence[ParamSpec]) -> None: ...

    def parameter_values(self) -> dict[str, Any]:
        """Current values of the declared parameters (defaults overridden by files and flags)."""

    def create_publisher(self, msg_type: type[M], topic: str, qos: Qos) -> Publisher[M]: ...

    def create_subscription(
        self, msg_type: type[M], topic: str, qos: Qos, callback: Callable[[M], None]
    ) -> Handle: ...

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Handle: ...


def absolute_namespace(namespace: str) -> str:
    """The namespace as rcl wants it: 'arm1', '/arm1/' and '/arm1' all mean '/arm1'."""
    return "/" + namespace.strip("/")


# rcl's topic name rules without `~` (private names) and `{}` substitutions, which the DDS
# adapter cannot resolve: tokens of letters, digits and '_' not starting with a digit, joined
# by single slashes, optionally absolute, no trailing slash.
TOPIC_NAME = re.compile(r"/?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*")


def resolve_topic(name: str, namespace: str = "/") -> str:
    """The fully qualified ROS name of a topic, as rcl resolves it (no remaps)."""
    if not TOPIC_NAME.fullmatch(name):
        raise ValueError(f"invalid topic name {name!r}")
    if name.startswith("/"):
        return name
    return "/".join((namespace.rstrip("/"), name))
