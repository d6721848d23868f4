"""Wire compatibility of the DDS adapter with ROS 2 (rmw_cyclonedds): the CDR bytes equal those of
an independent ROS 2 serialiser (rosbags), and type names, topic names, type hashes, enclave and
QoS are the ones rmw_cyclonedds uses."""

import numpy as np
import pytest
from cyclonedds.core import Policy
from rosbags.typesys import Stores, get_typestore

from robot_node.ros import messages as m
from robot_node.ros import port
from robot_node.ros.dds import WIRE, DdsPort, dds_type

TYPESTORE = get_typestore(Stores.ROS2_JAZZY)
T = TYPESTORE.types


def ros_time(stamp):
    sec, nanosec = divmod(round(stamp * 1e9), 10**9)
    return T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)


def header(stamp, frame_id=""):
    return T["std_msgs/msg/Header"](stamp=ros_time(stamp), frame_id=frame_id)


PIXELS = np.random.default_rng(0).integers(0, 256, size=(4, 5, 3), dtype=np.uint8)

# (neutral message, the same message built with rosbags' ROS 2 types)
CASES = {
    "Image": (
        m.Image(4, 5, "bgr8", 16, PIXELS.tobytes() + b"\0" * 4 * 1, stamp=12.25, frame_id="camera"),
        T["sensor_msgs/msg/Image"](
            header=header(12.25, "camera"), height=4, width=5, encoding="bgr8", is_bigendian=0, step=16,
            data=np.frombuffer(PIXELS.tobytes() + b"\0" * 4, np.uint8),
        ),
    ),
    "Float64MultiArray": (
        m.Float64MultiArray([0.5, -1.25, 3.0, 1e-9]),
        T["std_msgs/msg/Float64MultiArray"](
            layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
            data=np.array([0.5, -1.25, 3.0, 1e-9]),
        ),
    ),
    "JointState": (
        m.JointState(["shoulder", "elbow", "wrist"], [0.1, -0.2, 0.3], [1.0, 2.0, 3.0], [], stamp=7.5, frame_id="base"),
        T["sensor_msgs/msg/JointState"](
            header=header(7.5, "base"), name=["shoulder", "elbow", "wrist"], position=np.array([0.1, -0.2, 0.3]),
            velocity=np.array([1.0, 2.0, 3.0]), effort=np.array([], dtype=np.float64),
        ),
    ),
    "PointStamped": (
        m.PointStamped(0.25, -0.5, 0.75, stamp=3.0, frame_id="base"),
        T["geometry_msgs/msg/PointStamped"](
            header=header(3.0, "base"), point=T["geometry_msgs/msg/Point"](x=0.25, y=-0.5, z=0.75)
        ),
    ),
    "Float32": (m.Float32(1.5), T["std_msgs/msg/Float32"](data=1.5)),
    "Bool": (m.Bool(True), T["std_msgs/msg/Bool"](data=True)),
    "Empty": (m.Empty(), T["std_msgs/msg/Empty"](structure_needs_at_least_one_member=0)),
    "DiagnosticArray": (
        m.DiagnosticArray([m.DiagnosticStatus(2, "policy_node: control", "error", "arm", {"rate_hz": "10.0"})], stamp=5.0),
        T["diagnostic_msgs/msg/DiagnosticArray"](
            header=header(5.0),
            status=[
                T["diagnostic_msgs/msg/DiagnosticStatus"](
                    level=2, name="policy_node: control", message="error", hardware_id="arm",
                    values=[T["diagnostic_msgs/msg/KeyValue"](key="rate_hz", value="10.0")],
                )
            ],
        ),
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_cdr_bytes_equal_rosbags_ros2_serialiser(name):
    ours, theirs = CASES[name]
    wire = ours.to_wire(WIRE).serialize()
    expected = bytes(TYPESTORE.serialize_cdr(theirs, ours.ROS_TYPE))
    assert wire[:4] == b"\x00\x01\x00\x00"  # CDR_LE encapsulation: plain XCDR1, little-endian
    assert wire == expected


@pytest.mark.parametrize("name", sorted(CASES))
def test_messages_survive_a_round_trip_through_cdr(name):
    ours, _ = CASES[name]
    data = ours.to_wire(WIRE).serialize()
    assert type(ours).from_wire(dds_type(ours.ROS_TYPE).deserialize(data)) == ours


def test_type_names_follow_rmw_cyclonedds():
    assert dds_type("sensor_msgs/msg/Image").__idl__.idl_transformed_typename == "sensor_msgs::msg::dds_::Image_"
    assert dds_type("std_msgs/msg/Float64MultiArray").__idl__.idl_transformed_typename == (
        "std_msgs::msg::dds_::Float64MultiArray_"
    )


@pytest.fixture
def dds_port(monkeypatch):
    from node_helpers import dds_env, unique_domain_id

    for key, value in dds_env(unique_domain_id()).items():
        monkeypatch.setenv(key, value)
    node = DdsPort("wire_test", namespace="/robot1")
    yield node
    node.shutdown()


@pytest.mark.parametrize(
    "msg_type, topic, qos, dds_topic",
    [
        (m.Image, "camera/image_raw", port.SENSOR_DATA, "rt/robot1/camera/image_raw"),
        (m.Float64MultiArray, "command", port.Qos(reliable=True, depth=1), "rt/robot1/command"),
        (m.JointState, "joint_states", port.SENSOR_DATA, "rt/robot1/joint_states"),
        (m.DiagnosticArray, "/diagnostics", port.DEFAULT, "rt/diagnostics"),
        (m.Bool, "estop", port.LATCHED, "rt/robot1/estop"),
    ],
)
def test_writers_carry_rmw_names_type_hash_and_qos(dds_port, msg_type, topic, qos, dds_topic):
    writer = dds_port.create_publisher(msg_type, topic, qos)._writer
    assert writer.topic.name == dds_topic
    assert writer.topic.typename == dds_type(msg_type.ROS_TYPE).__idl__.idl_transformed_typename
    got = writer.get_qos()
    assert got[Policy.Userdata].data == f"typehash={TYPESTORE.hash_rihs01(msg_type.ROS_TYPE)};".encode()
    reliability = got[Policy.Reliability]
    assert (reliability != Policy.Reliability.BestEffort) == qos.reliable
    assert got[Policy.History].depth == qos.depth
    assert (got[Policy.Durability] == Policy.Durability.TransientLocal) == qos.transient_local
    assert got[Policy.DataRepresentation].use_xcdrv2_representation is False


def test_participant_announces_the_ros_enclave(dds_port):
    assert dds_port._participant.get_qos()[Policy.Userdata].data == b"enclave=/;"
