"""The subscriber client (`whale-listen subscribe`): what a running listener publishes.

An ordinary ZeroMQ SUB socket; each message is two frames, the topic and the JSON record.
"""

import json
from collections.abc import Iterator

import zmq

from detector.errors import WhaleError


def subscribe(
    endpoint: str, topics: list[str] | None = None, timeout: float | None = None
) -> Iterator[tuple[str, dict]]:
    """Yield (topic, event) from a publisher as they arrive.

    With a timeout, stops once that many seconds pass without a message.
    """
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    try:
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as exc:
            raise WhaleError(f"cannot connect to {endpoint}: {zmq.strerror(exc.errno)}") from exc
        for topic in topics if topics is not None else [""]:
            socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
        timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
        while socket.poll(timeout_ms, zmq.POLLIN):
            frames = socket.recv_multipart()
            try:
                topic_bytes, payload = frames
                yield topic_bytes.decode("utf-8"), json.loads(payload)
            except ValueError as exc:
                raise WhaleError(f"{endpoint}: not a whale-listen event message") from exc
    finally:
        socket.close(linger=0)
        context.term()
