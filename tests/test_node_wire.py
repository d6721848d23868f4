"""Wire compatibility of the DDS adapter with ROS 2 (rmw_cyclonedds): the CDR bytes equal those of
an independent ROS 2 serialiser (rosbags), and type names, topic names, type hashes, enclave and
QoS are the ones rmw_cyclonedds uses."""

import pytest
from cyclonedds.core import Policy

from robot_node.ros import messages as m
from robot_node.ros import port
from robot_node.ros.dds import WIRE, DdsPort, dds_type
from wire_cases import CASES, TYPESTORE


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
