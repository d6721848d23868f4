"""The node's window on ROS 2: a small port, neutral messages, and two adapters behind it.

`port` and `messages` are what the node logic uses. The adapters (`dds`: pip-only Cyclone DDS
speaking the ROS 2 wire format; `rclpy_node`: a real ROS 2 lifecycle node) are imported only
by `robot_node.main`, so nothing here pulls in rclpy or cyclonedds by accident.
"""
