import threading

import numpy as np
import pytest

from detector.ring import RingBuffer, RingClosed


def test_wraparound_preserves_order_over_random_writes_and_reads():
    rng = np.random.default_rng(0)
    ring = RingBuffer(97)
    signal = rng.standard_normal(20_000).astype(np.float32)
    sent = 0
    received = []
    while sent < len(signal) or ring.available:
        if sent < len(signal):
            n = min(int(rng.integers(1, 60)), ring.free, len(signal) - sent)
            assert ring.write(signal[sent : sent + n]) == n
            sent += n
        got = ring.read(int(rng.integers(1, 80)), timeout=0)
        received.append(got)
    assert ring.dropped == 0
    assert ring.total_written == len(signal)
    assert np.array_equal(np.concatenate(received), signal)


def test_overflow_counts_dropped_samples_exactly():
    ring = RingBuffer(10)
    assert ring.write(np.arange(7)) == 7
    assert ring.write(np.arange(7, 14)) == 3
    assert ring.dropped == 4
    assert ring.available == 10 and ring.free == 0
    assert ring.write(np.ones(5)) == 0
    assert ring.dropped == 9
    np.testing.assert_array_equal(ring.read(4), np.arange(4))
    assert ring.write(np.arange(100, 106)) == 4  # wraps around the end
    assert ring.dropped == 11
    assert ring.total_written == 14
    np.testing.assert_array_equal(ring.read(100), [4, 5, 6, 7, 8, 9, 100, 101, 102, 103])


def test_write_after_close_is_dropped_not_raised():
    ring = RingBuffer(8)
    ring.close()
    assert ring.write(np.ones(3)) == 0
    assert ring.dropped == 3


def test_write_blocking_with_consumer_thread_passes_long_signal_unchanged():
    rng = np.random.default_rng(1)
    signal = rng.uniform(-1, 1, 200_000).astype(np.float32)
    ring = RingBuffer(1000)
    received = []

    def consume():
        while True:
            got = ring.read(333)
            if len(got) == 0:
                return
            received.append(got)

    consumer = threading.Thread(target=consume)
    consumer.start()
    for start in range(0, len(signal), 4096):  # blocks larger than the ring
        ring.write_blocking(signal[start : start + 4096], timeout=30)
    ring.close()
    consumer.join(timeout=30)
    assert not consumer.is_alive()
    assert ring.dropped == 0
    assert np.array_equal(np.concatenate(received), signal)


def test_close_wakes_blocked_reader_and_leftovers_drain_first():
    ring = RingBuffer(16)
    results = []
    reader = threading.Thread(target=lambda: results.append(ring.read(8)))
    reader.start()
    reader.join(timeout=0.2)
    assert reader.is_alive()  # blocked: nothing to read, not closed
    ring.close()
    reader.join(timeout=10)
    assert not reader.is_alive()
    assert len(results[0]) == 0
    assert ring.closed


def test_closed_ring_still_returns_what_was_written():
    ring = RingBuffer(16)
    ring.write(np.arange(5))
    ring.close()
    np.testing.assert_array_equal(ring.read(3), [0, 1, 2])
    np.testing.assert_array_equal(ring.read(3), [3, 4])
    assert len(ring.read(3)) == 0


def test_read_timeout_returns_empty():
    ring = RingBuffer(4)
    out = ring.read(4, timeout=0.01)
    assert out.dtype == np.float32 and len(out) == 0


def test_write_blocking_raises_when_closed_while_waiting():
    ring = RingBuffer(4)
    ring.write(np.zeros(4))
    errors = []

    def produce():
        try:
            ring.write_blocking(np.ones(4))
        except RingClosed as exc:
            errors.append(exc)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(timeout=0.2)
    assert producer.is_alive()  # waiting for space
    ring.close()
    producer.join(timeout=10)
    assert not producer.is_alive()
    assert len(errors) == 1


def test_write_blocking_timeout_raises():
    ring = RingBuffer(4)
    with pytest.raises(TimeoutError):
        ring.write_blocking(np.zeros(6), timeout=0.01)
    assert ring.available == 4 and ring.dropped == 0
