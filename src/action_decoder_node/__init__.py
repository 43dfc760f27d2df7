"""Real-time action decoder: action chunks from the VLA backbone -> a safe 50 Hz command stream."""
