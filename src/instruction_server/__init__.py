"""The /execute_instruction action server: screening, episode control, feedback, success checks."""
