"""Training, evaluation and export of the up-call model.

Needs the `train` extra (torch, librosa, onnx, matplotlib); the daemon never imports it.
"""
