"""The pip-only adapter: Cyclone DDS from PyPI speaking the ROS 2 wire format directly.

A node built on this port joins a real ROS 2 graph (rmw_cyclonedds_cpp) without a ROS install.
What rmw_cyclonedds does and this adapter matches (DESIGN.md, STACK_NOTES "Interop"):

- DDS topic `rt/<fully qualified ROS name>`; type name `<pkg>::msg::dds_::<Type>_`;
- plain CDR (XCDR1, little-endian, final keyless structs), the same bytes rosbags writes;
- endpoint USER_DATA `typehash=RIHS01_<hex>;` and participant USER_DATA `enclave=/;`;
- QoS from `robot_node.ros.port` (best effort for cameras, reliable for commands).

Message definitions come from `ros2_pyterfaces` (a maintained re-implementation of
common_interfaces that also computes RIHS01 hashes). Its structs are named `pkg/msg/Type`, so
each is mirrored once into a struct with the same fields and the rmw_cyclonedds type name.

Callbacks run on one spin thread, like rclpy's single-threaded executor: subscriptions and
timers never run concurrently, so the node logic needs no locks.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import os
import threading
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

from cyclonedds.core import GuardCondition, InstanceState, Policy, Qos, ReadCondition, SampleState, ViewState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds.util import duration
from cyclonedds_idl import IdlStruct, types
from cyclonedds_idl._main import IdlMeta

from robot_node.ros import port
from robot_node.ros.param_file import load_param_file, resolve_parameters

ENCLAVE_USER_DATA = b"enclave=/;"
# A reliable write that cannot complete within this time fails instead of stalling a tick.
MAX_BLOCKING_S = 0.01
_SPIN_IDLE_S = 0.5


# --- message types -------------------------------------------------------------------------


def dds_type_name(ros_type: str) -> str:
    """'sensor_msgs/msg/Image' -> 'sensor_msgs::msg::dds_::Image_', as rmw_cyclonedds names it."""
    pkg, kind, name = ros_type.split("/")
    return f"{pkg}::{kind}::dds_::{name}_"


def dds_topic_name(ros_topic: str) -> str:
    """'/camera/image_raw' -> 'rt/camera/image_raw'."""
    return "rt" + ros_topic


def _definition(ros_type: str) -> type:
    pkg, kind, name = ros_type.split("/")
    return getattr(importlib.import_module(f"ros2_pyterfaces.cyclone.{pkg}.{kind}"), name)


def type_hash(ros_type: str) -> str:
    """The RIHS01 type hash that ROS 2 (Iron and later) expects in endpoint USER_DATA."""
    return _definition(ros_type).hash_rihs01()


@functools.lru_cache(maxsize=None)
def dds_type(ros_type: str) -> type:
    """The DDS struct for a ROS type: ros2_pyterfaces' fields under the rmw_cyclonedds name."""
    return _mirror(_definition(ros_type))


@functools.lru_cache(maxsize=None)
def _mirror(definition: type) -> type:
    hints = typing.get_type_hints(definition, include_extras=True)
    name = definition.__name__ + "_"
    namespace = IdlMeta.__prepare__(name, (IdlStruct,), typename=dds_type_name(definition.get_type_name()))
    namespace["__module__"] = __name__
    for f in dataclasses.fields(definition):
        annotation = _mirror_annotation(hints[f.name])
        namespace["__annotations__"][f.name] = annotation
        namespace[f.name] = _mirror_default(f, annotation)
    if not namespace["__annotations__"]:
        # rosidl gives empty messages one member, because IDL structs cannot be empty.
        namespace["__annotations__"]["structure_needs_at_least_one_member"] = types.uint8
        namespace["structure_needs_at_least_one_member"] = 0
    return dataclasses.dataclass(IdlMeta(name, (IdlStruct,), namespace))


def _is_definition(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "get_type_name")


def _mirror_annotation(annotation: Any) -> Any:
    """Nested messages, and sequences or arrays of them, refer to mirrored structs too."""
    if _is_definition(annotation):
        return _mirror(annotation)
    for meta in typing.get_args(annotation)[1:] if typing.get_origin(annotation) is typing.Annotated else ():
        if isinstance(meta, types.sequence) and _is_definition(meta.subtype):
            inner = _mirror(meta.subtype)
            return types.sequence[inner, meta.max_length] if meta.max_length else types.sequence[inner]
        if isinstance(meta, types.array) and _is_definition(meta.subtype):
            return types.array[_mirror(meta.subtype), meta.length]
    return annotation


def _mirror_default(f: dataclasses.Field, annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, IdlStruct):
        return dataclasses.field(default_factory=annotation)
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=type(f.default_factory()))
    return f.default


class DdsWireTypes:
    """`robot_node.ros.messages.WireTypes` for the mirrored DDS structs."""

    def __call__(self, ros_type: str) -> type:
        return dds_type(ros_type)

    def uint8_array(self, data: bytes) -> bytes:
        return bytes(data)

    def byte(self, value: int) -> int:
        return int(value)


WIRE = DdsWireTypes()


def dds_qos(qos: port.Qos, ros_type: str) -> Qos:
    reliability = (
        Policy.Reliability.Reliable(max_blocking_time=duration(seconds=MAX_BLOCKING_S))
        if qos.reliable
        else Policy.Reliability.BestEffort
    )
    durability = Policy.Durability.TransientLocal if qos.transient_local else Policy.Durability.Volatile
    user_data = f"typehash={type_hash(ros_type)};".encode()
    return Qos(reliability, durability, Policy.History.KeepLast(qos.depth), Policy.Userdata(user_data))


# --- the port ------------------------------------------------------------------------------


def ros_logger(name: str) -> logging.Logger:
    """A logger that prints like ROS 2's console output: `[INFO] [time] [node]: message`."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(levelname)s] [%(created).3f] [%(name)s]: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


class _Publisher:
    def __init__(self, owner: DdsPort, writer: DataWriter, topic: str) -> None:
        self._owner, self._writer, self.topic = owner, writer, topic

    def publish(self, msg: Any) -> None:
        self._writer.write(msg.to_wire(WIRE))

    def destroy(self) -> None:
        self._owner._forget(self)


class _Subscription:
    def __init__(
        self, owner: DdsPort, reader: DataReader, msg_type: type, topic: str, callback: Callable[[Any], None]
    ) -> None:
        self._owner, self.reader, self.msg_type, self.topic, self.callback = owner, reader, msg_type, topic, callback
        self.condition = ReadCondition(reader, SampleState.Any | ViewState.Any | InstanceState.Any)

    def take(self) -> list[Any]:
        """Every valid sample waiting, oldest first, converted to the neutral message."""
        samples = self.reader.take(N=64)
        return [self.msg_type.from_wire(s) for s in samples if s.sample_info.valid_data]

    def destroy(self) -> None:
        self._owner._forget(self)


class _Timer:
    def __init__(self, owner: DdsPort, period_s: float, callback: Callable[[], None]) -> None:
        self._owner, self.period_s, self.callback = owner, period_s, callback
        self.due = time.monotonic() + period_s

    def advance(self, now: float) -> None:
        """Next due time on the original phase; periods that already passed are skipped."""
        self.due += self.period_s
        if self.due <= now:
            self.due += self.period_s * (1 + int((now - self.due) // self.period_s))

    def destroy(self) -> None:
        self._owner._forget(self)


class DdsPort:
    """A ROS 2 node's worth of DDS entities: one participant, its topics, timers and parameters."""

    def __init__(
        self,
        node_name: str,
        *,
        namespace: str = "/",
        domain_id: int | None = None,
        param_file: str | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.node_name, self.namespace = node_name, namespace
        if domain_id is None:
            domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0") or 0)
        self.domain_id = domain_id
        self._logger = ros_logger(node_name)
        self._param_file, self._overrides = param_file, dict(overrides or {})
        self._values: dict[str, Any] = {}
        self._participant = DomainParticipant(domain_id, qos=Qos(Policy.Userdata(ENCLAVE_USER_DATA)))
        self._topics: dict[str, Topic] = {}
        self._waitset = WaitSet(self._participant)
        self._wakeup = GuardCondition(self._participant)
        self._waitset.attach(self._wakeup)
        self._lock = threading.Lock()
        self._subscriptions: list[_Subscription] = []
        self._timers: list[_Timer] = []
        self._publishers: list[_Publisher] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.callback_errors = 0

    # Port ------------------------------------------------------------------------------

    @property
    def logger(self) -> logging.Logger:
        return self._logger

    def now(self) -> float:
        return time.time()

    def declare_parameters(self, specs: Sequence[port.ParamSpec]) -> None:
        file_values = load_param_file(self._param_file, self.node_name, self.namespace) if self._param_file else {}
        self._values = resolve_parameters(specs, file_values, self._overrides)

    def parameter_values(self) -> dict[str, Any]:
        return dict(self._values)

    def create_publisher(self, msg_type: type, topic: str, qos: port.Qos) -> _Publisher:
        name = port.resolve_topic(topic, self.namespace)
        writer = DataWriter(self._participant, self._topic(name, msg_type), dds_qos(qos, msg_type.ROS_TYPE))
        publisher = _Publisher(self, writer, name)
        with self._lock:
            self._publishers.append(publisher)
        return publisher

    def create_subscription(
        self, msg_type: type, topic: str, qos: port.Qos, callback: Callable[[Any], None]
    ) -> _Subscription:
        name = port.resolve_topic(topic, self.namespace)
        reader = DataReader(self._participant, self._topic(name, msg_type), dds_qos(qos, msg_type.ROS_TYPE))
        subscription = _Subscription(self, reader, msg_type, name, callback)
        with self._lock:
            self._subscriptions.append(subscription)
            self._waitset.attach(subscription.condition)
        self._wakeup.set(True)
        return subscription

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> _Timer:
        if not period_s > 0:
            raise ValueError(f"timer period must be positive, got {period_s}")
        timer = _Timer(self, period_s, callback)
        with self._lock:
            self._timers.append(timer)
        self._wakeup.set(True)
        return timer

    # Spinning ------------------------------------------------------------------------------

    def spin(self) -> None:
        """Run callbacks on the calling thread until `stop()` or `shutdown()`."""
        while not self._stop.is_set():
            self.spin_once(self._next_timeout())

    def spin_once(self, timeout_s: float) -> None:
        self._waitset.wait(duration(seconds=max(0.0, timeout_s)))
        self._wakeup.set(False)
        with self._lock:
            subscriptions, timers = list(self._subscriptions), list(self._timers)
        for subscription in subscriptions:
            self._dispatch(subscription)
        now = time.monotonic()
        for timer in timers:
            if now >= timer.due:
                timer.advance(now)
                self._call(timer.callback, "timer")

    def spin_in_background(self) -> None:
        self._thread = threading.Thread(target=self.spin, name=f"{self.node_name}-spin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Make `spin()` return soon; safe from a signal handler (takes no lock)."""
        self._stop.set()
        self._wakeup.set(True)

    def shutdown(self) -> None:
        """Stop spinning and drop the port's topics, readers, writers and timers (the participant
        goes when the port does)."""
        self.stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5.0)
        with self._lock:
            self._subscriptions.clear()
            self._timers.clear()
            self._publishers.clear()
            self._topics.clear()

    def _next_timeout(self) -> float:
        with self._lock:
            due = min((t.due for t in self._timers), default=time.monotonic() + _SPIN_IDLE_S)
        return min(due - time.monotonic(), _SPIN_IDLE_S)

    def _dispatch(self, subscription: _Subscription) -> None:
        try:
            messages = subscription.take()
        except Exception as exc:  # a sample that does not decode must not stop the node
            self.callback_errors += 1
            self._logger.error(f"dropped undecodable samples on {subscription.topic}: {exc}")
            return
        for msg in messages:
            self._call(lambda m=msg: subscription.callback(m), subscription.topic)

    def _call(self, callback: Callable[[], None], what: str) -> None:
        try:
            callback()
        except Exception:
            self.callback_errors += 1
            self._logger.exception(f"callback for {what} raised")

    def _topic(self, name: str, msg_type: type) -> Topic:
        key = dds_topic_name(name)
        with self._lock:
            if key not in self._topics:
                self._topics[key] = Topic(self._participant, key, dds_type(msg_type.ROS_TYPE))
            return self._topics[key]

    def _forget(self, entity: _Publisher | _Subscription | _Timer) -> None:
        with self._lock:
            for group in (self._publishers, self._subscriptions, self._timers):
                if entity in group:
                    group.remove(entity)
            if isinstance(entity, _Subscription):
                self._waitset.detach(entity.condition)
