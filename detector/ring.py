"""A fixed-size sample ring between the audio source and the scorer.

Live audio arrives in a PortAudio callback that must never wait, so `write` copies what fits
and counts the rest as dropped; file replay can afford back-pressure, so `write_blocking`
waits for space instead. One producer thread, one consumer thread.
"""

import threading
import time

import numpy as np


class RingClosed(RuntimeError):
    """Raised by `write_blocking` once the ring is closed: the consumer is gone or stopping."""


class RingBuffer:
    """Single-producer / single-consumer float32 ring; positions are absolute sample counters."""

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"ring capacity must be positive, got {capacity}")
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._capacity = capacity
        self._written = 0  # samples ever stored (the write position, absolute)
        self._read = 0  # samples ever handed to the consumer (the read position, absolute)
        self._dropped = 0
        self._closed = False
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def available(self) -> int:
        """Samples stored and not yet read."""
        with self._lock:
            return self._written - self._read

    @property
    def free(self) -> int:
        with self._lock:
            return self._capacity - (self._written - self._read)

    @property
    def dropped(self) -> int:
        """Samples `write` could not store because the ring was full (or closed)."""
        with self._lock:
            return self._dropped

    @property
    def total_written(self) -> int:
        """Samples ever stored: the stream position of the next sample written."""
        with self._lock:
            return self._written

    @property
    def closed(self) -> bool:
        with self._lock:
            return self._closed

    def _store(self, x: np.ndarray) -> None:
        """Copy x (which must fit) at the write position: at most two slice copies. Lock held."""
        start = self._written % self._capacity
        first = min(len(x), self._capacity - start)
        self._buf[start : start + first] = x[:first]
        self._buf[: len(x) - first] = x[first:]
        self._written += len(x)

    def write(self, x: np.ndarray) -> int:
        """Store what fits without waiting; count the rest in `dropped`. Returns samples stored.

        Never raises on a full or closed ring: it runs inside the audio callback.
        """
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        with self._lock:
            if self._closed:
                self._dropped += len(x)
                return 0
            n = min(len(x), self._capacity - (self._written - self._read))
            self._dropped += len(x) - n
            if n:
                self._store(x[:n])
                self._changed.notify_all()
            return n

    def write_blocking(self, x: np.ndarray, timeout: float | None = None) -> None:
        """Store all of x, waiting for the consumer to make room (replay: never drop).

        Raises RingClosed if the ring is or gets closed, TimeoutError if `timeout` seconds pass
        before everything is stored (what was stored stays stored).
        """
        x = np.asarray(x, dtype=np.float32).reshape(-1)
        deadline = None if timeout is None else time.monotonic() + timeout
        pos = 0
        with self._lock:
            while pos < len(x):
                if self._closed:
                    raise RingClosed("ring buffer closed while writing")
                space = self._capacity - (self._written - self._read)
                if space == 0:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"ring buffer full for {timeout} s")
                    self._changed.wait(remaining)
                    continue
                n = min(space, len(x) - pos)
                self._store(x[pos : pos + n])
                pos += n
                self._changed.notify_all()

    def read(self, max_n: int, timeout: float | None = None) -> np.ndarray:
        """Return a copy of up to max_n samples, waiting until at least one is available.

        Returns an empty array once the ring is closed and drained, or when `timeout` passes.
        """
        if max_n <= 0:
            raise ValueError(f"max_n must be positive, got {max_n}")
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while self._written == self._read and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            n = min(max_n, self._written - self._read)
            start = self._read % self._capacity
            first = min(n, self._capacity - start)
            out = np.empty(n, dtype=np.float32)
            out[:first] = self._buf[start : start + first]
            out[first:] = self._buf[: n - first]
            self._read += n
            if n:
                self._changed.notify_all()
            return out

    def close(self) -> None:
        """End of stream: wake the reader (it drains what is left) and any blocked writer."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
