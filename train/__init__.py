"""Training, evaluation and export of the up-call model (needs the `train` extra: torch, librosa, onnx)."""
