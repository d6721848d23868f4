"""Everything that runs on the robot: the ROS 2 policy node, the safety layer, the link to the trainer."""
