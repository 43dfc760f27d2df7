"""Demonstrations: the LeRobotDataset v3 format, scripted experts in simulation, and recording."""
