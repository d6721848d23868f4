"""The ROS 2 messages the node speaks, as small neutral dataclasses.

The control logic never sees adapter types. Each class converts to and from the wire type of
either adapter with one piece of code: rclpy messages and the DDS adapter's generated types have
the same field names and keyword constructors, and differ only in how they take `uint8[]` data
and `byte` fields, which the adapter's `WireTypes` supplies. Stamps are float seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class WireTypes(Protocol):
    """What an adapter supplies to build its own message objects."""

    def __call__(self, ros_type: str) -> Any:
        """The adapter's class for a ROS type name such as 'sensor_msgs/msg/Image'."""

    def uint8_array(self, data: bytes) -> Any:
        """A `uint8[]` field value in the form the adapter's message takes fastest."""

    def byte(self, value: int) -> Any:
        """A `byte` field value."""


def _time(wire: WireTypes, stamp: float) -> Any:
    sec, nanosec = divmod(int(round(stamp * 1e9)), 1_000_000_000)
    return wire("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def _header(wire: WireTypes, stamp: float, frame_id: str) -> Any:
    return wire("std_msgs/msg/Header")(stamp=_time(wire, stamp), frame_id=frame_id)


def _stamp(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


def _as_int(value: Any) -> int:
    """A `byte` field: rclpy gives bytes of length 1, the DDS types an int."""
    return value[0] if isinstance(value, (bytes, bytearray)) else int(value)


@dataclass
class Image:
    ROS_TYPE: ClassVar[str] = "sensor_msgs/msg/Image"
    height: int
    width: int
    encoding: str
    step: int  # bytes per row, padding included
    data: bytes
    stamp: float = 0.0
    frame_id: str = ""
    is_bigendian: int = 0

    def to_wire(self, wire: WireTypes) -> Any:
        return wire(self.ROS_TYPE)(
            header=_header(wire, self.stamp, self.frame_id),
            height=self.height,
            width=self.width,
            encoding=self.encoding,
            is_bigendian=self.is_bigendian,
            step=self.step,
            data=wire.uint8_array(self.data),
        )

    @classmethod
    def from_wire(cls, m: Any) -> Image:
        return cls(
            height=m.height,
            width=m.width,
            encoding=m.encoding,
            step=m.step,
            data=bytes(m.data),
            stamp=_stamp(m.header),
            frame_id=m.header.frame_id,
            is_bigendian=m.is_bigendian,
        )


@dataclass
class JointState:
    ROS_TYPE: ClassVar[str] = "sensor_msgs/msg/JointState"
    name: list[str]
    position: list[float]
    velocity: list[float] = field(default_factory=list)
    effort: list[float] = field(default_factory=list)
    stamp: float = 0.0
    frame_id: str = ""

    def to_wire(self, wire: WireTypes) -> Any:
        return wire(self.ROS_TYPE)(
            header=_header(wire, self.stamp, self.frame_id),
            name=list(self.name),
            position=[float(v) for v in self.position],
            velocity=[float(v) for v in self.velocity],
            effort=[float(v) for v in self.effort],
        )

    @classmethod
    def from_wire(cls, m: Any) -> JointState:
        return cls(
            name=list(m.name),
            position=list(m.position),
            velocity=list(m.velocity),
            effort=list(m.effort),
            stamp=_stamp(m.header),
            frame_id=m.header.frame_id,
        )


@dataclass
class PointStamped:
    """The end-effector position, for the workspace box (geometry_msgs/PointStamped)."""

    ROS_TYPE: ClassVar[str] = "geometry_msgs/msg/PointStamped"
    x: float
    y: float
    z: float
    stamp: float = 0.0
    frame_id: str = ""

    def to_wire(self, wire: WireTypes) -> Any:
        point = wire("geometry_msgs/msg/Point")(x=float(self.x), y=float(self.y), z=float(self.z))
        return wire(self.ROS_TYPE)(header=_header(wire, self.stamp, self.frame_id), point=point)

    @classmethod
    def from_wire(cls, m: Any) -> PointStamped:
        return cls(m.point.x, m.point.y, m.point.z, stamp=_stamp(m.header), frame_id=m.header.frame_id)


@dataclass
class Float64MultiArray:
    """A ros2_control forward command: one value per joint or axis, empty layout."""

    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Float64MultiArray"
    data: list[float]

    def to_wire(self, wire: WireTypes) -> Any:
        return wire(self.ROS_TYPE)(data=[float(v) for v in self.data])

    @classmethod
    def from_wire(cls, m: Any) -> Float64MultiArray:
        return cls(data=list(m.data))


@dataclass
class Float32:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Float32"
    data: float

    def to_wire(self, wire: WireTypes) -> Any:
        return wire(self.ROS_TYPE)(data=float(self.data))

    @classmethod
    def from_wire(cls, m: Any) -> Float32:
        return cls(data=m.data)


@dataclass
class Bool:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Bool"
    data: bool

    def to_wire(self, wire: WireTypes) -> Any:
        return wire(self.ROS_TYPE)(data=bool(self.data))

    @classmethod
    def from_wire(cls, m: Any) -> Bool:
        return cls(data=bool(m.data))


@dataclass
class Empty:
    ROS_TYPE: ClassVar[str] = "std_msgs/msg/Empty"

    def to_wire(self, wire: WireTypes) -> Any:
        return wire(self.ROS_TYPE)()

    @classmethod
    def from_wire(cls, m: Any) -> Empty:
        return cls()


@dataclass
class DiagnosticStatus:
    ROS_TYPE: ClassVar[str] = "diagnostic_msgs/msg/DiagnosticStatus"
    OK: ClassVar[int] = 0
    WARN: ClassVar[int] = 1
    ERROR: ClassVar[int] = 2
    STALE: ClassVar[int] = 3
    level: int
    name: str
    message: str = ""
    hardware_id: str = ""
    values: dict[str, str] = field(default_factory=dict)

    def to_wire(self, wire: WireTypes) -> Any:
        key_value = wire("diagnostic_msgs/msg/KeyValue")
        return wire(self.ROS_TYPE)(
            level=wire.byte(self.level),
            name=self.name,
            message=self.message,
            hardware_id=self.hardware_id,
            values=[key_value(key=k, value=v) for k, v in self.values.items()],
        )

    @classmethod
    def from_wire(cls, m: Any) -> DiagnosticStatus:
        return cls(_as_int(m.level), m.name, m.message, m.hardware_id, {kv.key: kv.value for kv in m.values})


@dataclass
class DiagnosticArray:
    ROS_TYPE: ClassVar[str] = "diagnostic_msgs/msg/DiagnosticArray"
    status: list[DiagnosticStatus]
    stamp: float = 0.0

    def to_wire(self, wire: WireTypes) -> Any:
        return wire(self.ROS_TYPE)(header=_header(wire, self.stamp, ""), status=[s.to_wire(wire) for s in self.status])

    @classmethod
    def from_wire(cls, m: Any) -> DiagnosticArray:
        return cls(status=[DiagnosticStatus.from_wire(s) for s in m.status], stamp=_stamp(m.header))


MESSAGE_TYPES: tuple[type, ...] = (
    Image,
    JointState,
    PointStamped,
    Float64MultiArray,
    Float32,
    Bool,
    Empty,
    DiagnosticArray,
)
