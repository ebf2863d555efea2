"""The Iridium SBD output (`--sbd-port /dev/ttyUSB0`): compact events over the satellite.

The scoring loop only encodes each event (detector.compact) and puts it in the queue on disk
(detector.sbd_queue), so a modem that is slow, down or unplugged never holds scoring. A worker
thread owns the modem (detector.sbd_modem): once the oldest queued event is `--sbd-delay` seconds
old (or a message's worth are waiting) it packs up to ten with the last heartbeat's summary into
one message of at most 340 bytes and sends it; the events leave the queue only when the gateway
has taken the message. A failed session, or a port that is lost or never opens, is retried after
RETRY_MIN_S, doubling up to `--sbd-retry-max`, with a line when it starts failing and one when
messages go again. With `--sbd-heartbeat`, a message with the summary alone goes when no other
has for that long, so the shore can tell a quiet sea from a dead buoy. At exit it sends what is
queued, delay ignored, for up to `--linger` (a wait to retry is cut short for one last attempt);
what is left waits on disk for the next start.
"""

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from detector.compact import MAX_EVENTS, encode_event, pack_message, station_id
from detector.errors import WhaleError
from detector.journal import say
from detector.outputs import Output
from detector.sbd_modem import COMMAND_S, Modem, ModemError, SessionFailed
from detector.sbd_queue import SbdQueue
from detector.settings import Settings

RETRY_MIN_S = 10.0  # the first wait after a failed attempt
JOIN_S = 2.0  # a worker told to stop leaves its modem wait within the port's read timeout


class SbdOutput(Output):
    """Events into the durable queue; a worker thread empties it through the modem."""

    name = "sbd"

    def __init__(
        self,
        queue: SbdQueue,
        open_port: Callable[[], object],
        port_name: str,
        station: int,
        delay_s: float,
        retry_max_s: float,
        linger_s: float,
        retry_min_s: float = RETRY_MIN_S,
        heartbeat_s: float = 0.0,
    ) -> None:
        self.queue, self.open_port, self.port_name = queue, open_port, port_name
        self.station = station
        self.delay_s, self.linger_s, self.heartbeat_s = delay_s, linger_s, heartbeat_s
        self.retry_min_s, self.retry_max_s = min(retry_min_s, retry_max_s), retry_max_s
        self.status: dict | None = None  # the last heartbeat, summarised in each message
        self.port_open = False
        self.sent_messages = self.sent_events = 0
        self.failed_sessions = 0  # AT+SBDIX ran, the gateway did not take the message
        self.modem_errors = 0  # no answer, ERROR, or the port lost or not there
        self.last_mo_status: int | None = None
        self._failures = 0  # attempts in a row that failed: said once, and when it ends
        self._said_full = False
        self._closing = threading.Event()  # send what is queued now, then end
        self._stop = threading.Event()  # end now
        self._last_sent = time.monotonic()  # a heartbeat message is due heartbeat_s after it
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._work, name="sbd", daemon=True)
        self._thread.start()  # what an earlier run left in the queue goes out now

    # -- the scoring loop's side: never waits on the modem ---------------------------------------
    def on_event(self, event: dict) -> None:
        evicted = self.queue.put(encode_event(event, self.station))
        if evicted and not self._said_full:
            self._said_full = True
            say(
                f"sbd: the queue {self.queue.path} is full ({self.queue.max_events} events): the "
                f"oldest are dropped from it to take new ones (they stay in the event log); "
                f"status sbd.evicted_events counts them"
            )
        with self._wake:
            self._wake.notify()

    def on_status(self, status: dict) -> None:
        self.status = status

    def counters(self) -> dict:
        queued = len(self.queue)
        return {
            "port_open": self.port_open,
            "queued_events": queued,
            "queued_messages": math.ceil(queued / MAX_EVENTS),
            "sent_messages": self.sent_messages,
            "sent_events": self.sent_events,
            "failed_sessions": self.failed_sessions,
            "modem_errors": self.modem_errors,
            "evicted_events": self.queue.evicted,
            "last_mo_status": self.last_mo_status,
        }

    def status_fields(self) -> dict:
        return {"sbd": self.counters()}

    def describe(self) -> str:
        return f"SBD modem on {self.port_name} (queue {self.queue.path}: {len(self.queue)} waiting)"

    def close(self) -> None:
        """Send what is queued for up to `linger_s`, then stop; the rest stays on disk."""
        deadline = time.monotonic() + self.linger_s
        with self._wake:
            self._closing.set()
            self._wake.notify()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        self._stop.set()
        with self._wake:
            self._wake.notify()
        self._thread.join(JOIN_S)
        left = len(self.queue)
        if left:
            say(f"sbd: {left} event(s) wait in the queue {self.queue.path} for the next start")
        if not self._thread.is_alive():
            self.queue.close()

    # -- the worker -------------------------------------------------------------------------------
    def _work(self) -> None:
        modem, port = None, None
        backoff = self.retry_min_s
        while self._wait_due():
            try:
                if modem is None:
                    port = self.open_port()
                    self.port_open = True
                    modem = Modem(port, self._stop.is_set)
                    modem.start()
                self._send(modem)
                backoff = self.retry_min_s
                continue
            except SessionFailed as failed:
                self.failed_sessions += 1
                self.last_mo_status = failed.mo_status
                self._failed(str(failed))
            except (ModemError, OSError) as error:  # pyserial's SerialException is an OSError
                if self._stop.is_set():
                    break  # cut off at exit: not the modem's fault
                self.modem_errors += 1
                self._failed(f"modem on {self.port_name}: {error}")
                modem, port = None, _close(port)
                self.port_open = False
            except Exception as error:  # noqa: BLE001 - the queue's disk: retried, never fatal
                self._failed(f"{type(error).__name__}: {error}")
            if self._closing.is_set():
                break  # failed while exiting: no more attempts, the queue keeps the rest
            self._closing.wait(backoff)  # an exit cuts the wait short for one last attempt
            backoff = min(backoff * 2, self.retry_max_s)
        self.port_open = False
        _close(port)

    def _wait_due(self) -> bool:
        """Until a message is due (True) or the worker should end (False)."""
        with self._wake:
            while not self._stop.is_set():
                oldest = self.queue.oldest_at()
                if oldest is None:
                    if self._closing.is_set():
                        return False
                    beat_in = self._heartbeat_in()
                    if beat_in is not None and beat_in <= 0:
                        return True  # a status-only message
                    self._wake.wait(beat_in)
                    continue
                # at most the delay: a wall clock set back must not hold the queue for hours
                due_in = min(oldest + self.delay_s - time.time(), self.delay_s)
                if self._closing.is_set() or due_in <= 0 or len(self.queue) >= MAX_EVENTS:
                    return True
                self._wake.wait(due_in)
            return False

    def _heartbeat_in(self) -> float | None:
        """Seconds to the next status-only message; None without heartbeats (or a status)."""
        if not self.heartbeat_s:
            return None
        if self.status is None:
            return min(self.heartbeat_s, 1.0)  # look again once the loop's first heartbeat is in
        return self._last_sent + self.heartbeat_s - time.monotonic()

    def _send(self, modem: Modem) -> None:
        batch = self.queue.head(MAX_EVENTS)
        sbd = {
            "queued_events": len(self.queue),
            "evicted_events": self.queue.evicted,
            "failed_sessions": self.failed_sessions,
        }
        records = [record for _, record in batch]
        message = pack_message(records, self.station, datetime.now(UTC), self.status, sbd)
        session = modem.send(message)
        self.queue.remove([i for i, _ in batch])
        self.sent_messages += 1
        self.sent_events += len(batch)
        self._last_sent = time.monotonic()
        self.last_mo_status = session.mo_status
        if self._failures:
            say(f"sbd: messages go again (after {self._failures} failed attempt(s))")
            self._failures = 0

    def _failed(self, why: str) -> None:
        if not self._failures:
            say(f"sbd: {why}; events wait in the queue {self.queue.path}, retrying")
        self._failures += 1


def _close(port: object) -> None:
    if port is not None:
        try:
            port.close()  # type: ignore[attr-defined]
        except OSError:
            pass


def default_queue_path(events_log: Path) -> Path:
    """Beside the event log (the service can write there)."""
    return Path(f"{events_log}.sbd-queue")


def open_output(settings: Settings) -> SbdOutput:
    try:
        import serial
    except ImportError:
        raise WhaleError("--sbd-port needs pyserial: pip install 'whale-listen[sbd]'") from None
    port = str(settings.sbd_port)
    queue = SbdQueue(settings.sbd_queue or default_queue_path(settings.events_log),
                     settings.sbd_queue_max)  # fmt: skip
    station = settings.sbd_station_id
    station = station_id(settings.station) if station is None else station

    def open_port() -> object:
        return serial.Serial(port, settings.sbd_baud, timeout=0.1, write_timeout=COMMAND_S)

    return SbdOutput(
        queue, open_port, port, station, settings.sbd_delay, settings.sbd_retry_max,
        settings.linger, heartbeat_s=settings.sbd_heartbeat,
    )  # fmt: skip
