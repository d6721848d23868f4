"""The MuJoCo manipulator that stands in for the robot: environments, data collection, ROS bridge."""
