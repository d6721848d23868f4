"""The bridge on the rclpy adapter, where rclpy imports (a sourced ROS 2 install): the same
SimBridge behind RclpyPort answers reset with ready and moves on command. Skipped elsewhere
(conftest marks `ros` tests)."""

import time

import pytest

pytestmark = pytest.mark.ros


def test_bridge_on_rclpy_answers_reset_with_ready_and_moves_on_command():
    import rclpy
    from geometry_msgs.msg import PointStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from std_msgs.msg import Empty, Float64MultiArray

    from robot_node.ros.rclpy_node import RclpyPort
    from sim.bridge import BridgeConfig, SimBridge

    rclpy.init()
    node = rclpy.create_node("sim_bridge")
    driver = rclpy.create_node("driver")
    bridge = SimBridge(RclpyPort(node), BridgeConfig(speed=5.0))
    try:
        bridge.start()
        readies, heights = [], []
        driver.create_subscription(Empty, "episode/ready", lambda _: readies.append(1), 10)
        driver.create_subscription(PointStamped, "ee_position", lambda p: heights.append(p.point.z), qos_profile_sensor_data)
        reset = driver.create_publisher(Empty, "episode/reset", 10)
        command = driver.create_publisher(Float64MultiArray, "command", 10)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.add_node(driver)

        def spin_until(condition, timeout, each_time=lambda: None):
            deadline = time.monotonic() + timeout
            while not condition():
                assert time.monotonic() < deadline, "timed out"
                each_time()
                executor.spin_once(timeout_sec=0.02)

        spin_until(lambda: heights, 20)
        spin_until(lambda: readies, 20, lambda: reset.publish(Empty()))  # again until discovered
        start = heights[-1]
        up = Float64MultiArray(data=[0.0, 0.0, 0.015, -1.0])  # 1.5 cm per period, gripper open
        spin_until(lambda: heights[-1] > start + 0.03, 20, lambda: command.publish(up))
    finally:
        bridge.close()
        driver.destroy_node()
        node.destroy_node()
        rclpy.try_shutdown()
