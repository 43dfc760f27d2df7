"""The learned VLA backbone: model (transformers conventions), processor, training, policy."""
