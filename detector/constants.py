"""Fixed facts of the audio and the model contract, shared by the daemon and the training code."""

SAMPLE_RATE = 2000  # Hz: the rate every stage works at; other rates are resampled on input
WINDOW_SECONDS = 2.0
WINDOW_SAMPLES = int(SAMPLE_RATE * WINDOW_SECONDS)  # 4000: the model's input length
DEFAULT_HOP_SECONDS = 0.5
MIN_INPUT_RATE = 800  # Hz: below this a recording cannot hold the 30-400 Hz the models look at
