"""The VLA backbone: the policy interface, the zero-shot ER planner and the ROS node."""
