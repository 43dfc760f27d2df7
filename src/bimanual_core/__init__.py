"""Shared, dependency-light pieces of the stack: configuration, ROS conversions, CLI, bring-up."""
