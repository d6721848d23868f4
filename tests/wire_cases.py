"""The same messages twice: as the node's neutral dataclasses and as rosbags builds them with its
own ROS 2 definitions, for comparing the CDR bytes of the DDS adapter (tests/test_node_wire.py)
and of rclpy (tests/test_node_rclpy.py) with an independent serialiser. No DDS or ROS imports, so
either test can use them where the other adapter cannot run."""

import numpy as np
from rosbags.typesys import Stores, get_typestore

from robot_node.ros import messages as m

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
