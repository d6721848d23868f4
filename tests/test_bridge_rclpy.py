"""The bridge on the rclpy adapter, where rclpy imports (a sourced ROS 2 install): the same
SimBridge behind RclpyPort answers reset with ready and moves on command, and the `sim_bridge`
process stops cleanly on SIGINT. Skipped elsewhere (conftest marks `ros` tests)."""

import os
import signal
import subprocess
import sys
import time

import pytest
from node_helpers import ROOT, ros_domain_id

pytestmark = pytest.mark.ros


def test_bridge_on_rclpy_answers_reset_with_ready_and_moves_on_command():
    import rclpy
    from geometry_msgs.msg import PointStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from std_msgs.msg import Empty, Float64MultiArray

    from robot_node.ros.rclpy_node import RclpyPort
    from sim.bridge import BridgeConfig, SimBridge

    rclpy.init(domain_id=ros_domain_id())
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


def test_bridge_process_on_rclpy_exits_cleanly_on_sigint(tmp_path):
    """`sim_bridge` as `ros2 launch sim_hil.launch.xml` starts it: it streams, and stops with
    status 0 on SIGINT after its last status line."""
    import rclpy
    from geometry_msgs.msg import PointStamped
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data

    domain_id = ros_domain_id()
    rclpy.init(domain_id=domain_id)
    listener = rclpy.create_node("listener")
    heights = []
    listener.create_subscription(PointStamped, "ee_position", lambda p: heights.append(p.point.z), qos_profile_sensor_data)
    executor = SingleThreadedExecutor()
    executor.add_node(listener)
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain_id), "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "bridge.log"
    with open(log_path, "w") as log:
        command = [sys.executable, "-m", "sim.bridge", "--adapter", "rclpy", "--speed", "5", "--ros-args", "-r", "__node:=sim_bridge"]
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not heights:
                assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
                executor.spin_once(timeout_sec=0.05)
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=20) == 0, log_path.read_text()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            executor.shutdown()
            listener.destroy_node()
            rclpy.try_shutdown()
    output = log_path.read_text()
    assert "steps (" in output and "Traceback" not in output  # the last status line, no crash
