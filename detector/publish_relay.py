"""The publisher process: the daemon's XPUB socket, fed over a private socket pair.

A client can make libzmq file subscriptions faster than anyone can count them (200,000 distinct
200-byte topics took a process from 31 to 319 MB before it saw the first), so the socket that
takes them lives here, in a process of its own with a data-size limit. A flood can then only
end this process: `detector.publish.Publisher` notices, says so, and starts another, while the
daemon goes on listening and logging; subscribers reconnect and fetch what they missed through
catch-up.

The pair carries one message per datagram (SOCK_SEQPACKET), its first byte saying what it is:
daemon -> here: C (config, JSON), M (topic, newline, payload: publish it), Q (close, JSON);
here -> daemon: B (bound, JSON), E (could not bind: the one-line reason), S (counts, JSON).
"""

import json
import resource
import signal
import socket
import sys

import zmq

from detector.curve import ServerKeys
from detector.errors import WhaleError
from detector.xpub import Xpub

MAX_FRAME = 1 << 20  # bytes of one message over the pair
STATUS_MS = 200  # counts are sent when they change, checked at least this often


def config_frame(
    endpoints: list[str], curve: ServerKeys | None, limit: int, retry_s: float
) -> bytes:
    keys = None
    if curve is not None:
        allowed = sorted(key.hex() for key in curve.allowed)
        keys = {"public": curve.public.hex(), "secret": curve.secret.hex(), "allowed": allowed}
    config = {"endpoints": endpoints, "curve": keys, "data_limit": limit, "retry_s": retry_s}
    return b"C" + json.dumps(config).encode()


def _curve(keys: dict | None) -> ServerKeys | None:
    if keys is None:
        return None
    allowed = frozenset(bytes.fromhex(key) for key in keys["allowed"])
    return ServerKeys(bytes.fromhex(keys["public"]), bytes.fromhex(keys["secret"]), allowed)


def _counts(xpub: Xpub) -> bytes:
    counts = {
        "subscriptions": xpub.subscriptions,
        "foreign": xpub.foreign,
        "reopened": xpub.reopened,
        "dropped": xpub.dropped,
    }
    return b"S" + json.dumps(counts).encode()


def relay(pair: socket.socket, xpub: Xpub) -> None:
    """Publish what the daemon sends until it says close or goes away; report counts."""
    sent = b""
    while True:
        poller = zmq.Poller()  # anew each time: a reopen replaces the socket
        poller.register(pair.fileno(), zmq.POLLIN)
        poller.register(xpub.socket, zmq.POLLIN)
        ready = dict(poller.poll(STATUS_MS))  # subscriptions are read below, by _counts
        while pair.fileno() in ready:
            try:
                frame = pair.recv(MAX_FRAME, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not frame:  # the daemon is gone (killed): nothing more to publish
                xpub.close(linger_ms=0)
                return
            if frame[:1] == b"M":
                topic, _, payload = frame[1:].partition(b"\n")
                xpub.send(topic, payload)
            elif frame[:1] == b"Q":
                pair.send(_counts(xpub))
                xpub.close(linger_ms=int(json.loads(frame[1:])["linger_ms"]))
                return
        counts = _counts(xpub)
        if counts != sent:
            try:
                pair.send(counts, socket.MSG_DONTWAIT)
                sent = counts
            except BlockingIOError:
                pass  # the daemon is busy: the next round sends the newer counts


def main() -> None:
    # The daemon's signals are for the daemon (a terminal's Ctrl-C reaches the whole group):
    # it closes this process itself, and its death ends the pair.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    pair = socket.socket(fileno=int(sys.argv[1]))
    config = json.loads(pair.recv(MAX_FRAME)[1:])
    limit = int(config["data_limit"])
    try:
        if limit:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    except (OSError, ValueError) as exc:  # a sandbox that refuses it: say so, do not go unbounded
        pair.send(b"E" + f"cannot limit the publisher process's memory: {exc}".encode())
        return
    try:
        xpub = Xpub(config["endpoints"], _curve(config["curve"]), float(config["retry_s"]))
    except WhaleError as exc:
        pair.send(b"E" + str(exc).encode())
        return
    pair.send(b"B" + json.dumps({"endpoints": xpub.endpoints}).encode())
    relay(pair, xpub)


if __name__ == "__main__":
    main()
