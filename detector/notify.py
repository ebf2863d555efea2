"""Tell systemd how the daemon is doing: the sd_notify protocol over a plain datagram socket.

With `Type=notify` systemd waits for READY=1 before it calls the service started, and with
`WatchdogSec=` it kills and restarts a daemon that stops sending WATCHDOG=1 (e.g. a capture
thread stuck in the sound driver). The protocol is one AF_UNIX datagram of `KEY=value` lines,
so no libsystemd binding is needed. Outside systemd (NOTIFY_SOCKET unset) every call is a no-op,
and a failed send is logged once and never raised: losing a status line must not stop detection.
"""

import os
import socket
import time
from collections.abc import Mapping

from detector.journal import log

SEND_TIMEOUT_S = 1.0  # systemd reads its notify socket promptly; never stall the daemon longer


def _socket_address(value: str) -> str:
    """`@name` is the Linux abstract namespace, which Python spells with a leading NUL."""
    return "\0" + value[1:] if value.startswith("@") else value


def _watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """The watchdog interval systemd set for this process, else None (sd_watchdog_enabled)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # the variable was inherited from a parent the watchdog is meant for
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class Notifier:
    """sd_notify client; call `watchdog()` every loop iteration, it sends only when due."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(raw) if raw.startswith(("/", "@")) else None
        self.watchdog_interval: float | None = (
            _watchdog_seconds(env) if self._address is not None else None
        )
        self._socket: socket.socket | None = None
        self._last_watchdog: float | None = None
        self._failed = False
        self.sent = 0  # datagrams delivered, for tests and diagnostics

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` fields in one datagram; False (never an exception) if not delivered."""
        if self._address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
                self._socket.settimeout(SEND_TIMEOUT_S)
            self._socket.sendto("\n".join(fields).encode("utf-8"), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                shown = self._address.replace("\0", "@")
                log.warning(
                    "cannot notify systemd at %s: %s (further failures not logged)", shown, exc
                )
            return False
        self.sent += 1
        return True

    def ready(self) -> bool:
        """Startup finished (model loaded, input open, sockets bound)."""
        return self.notify("READY=1")

    def status(self, text: str) -> bool:
        """One line shown by `systemctl status` (newlines would start new protocol fields)."""
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def stopping(self) -> bool:
        """Shutdown has begun, so systemd does not mistake a slow exit for a hang."""
        return self.notify("STOPPING=1")

    def watchdog(self, now: float | None = None) -> bool:
        """Send WATCHDOG=1 if half the interval has passed since the last one; True if sent."""
        if self.watchdog_interval is None:
            return False
        now = time.monotonic() if now is None else now
        if (
            self._last_watchdog is not None
            and now - self._last_watchdog < self.watchdog_interval / 2
        ):
            return False
        self._last_watchdog = now
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
