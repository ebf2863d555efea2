"""whale-listen: hear North Atlantic right whale up-calls and publish them the moment they happen.

Importing this package must stay cheap: no torch, no librosa (a buoy computer has little disk and
memory). Heavy modules (onnxruntime, zmq, sounddevice) are imported by the stages that need them.
"""

__version__ = "0.1.0"
