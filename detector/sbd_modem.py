"""The Iridium SBD AT commands of a 9602/9603-style modem, over any serial-like object.

`port` needs only `write(bytes)` and `read(n)` returning what arrived within its own short
timeout (pyserial's `Serial(timeout=0.1)`; `in_waiting` is used when it has one): nothing here
knows pyserial, so a pty works the same.
One message goes out as: `AT+SBDWB=<len>` -> `READY` -> the bytes and their 2-byte checksum ->
`0`; then `AT+SBDIX` (the satellite session) -> `+SBDIX: <MO status>,<MOMSN>,<MT status>,<MTMSN>,
<MT length>,<MT queued>`, where MO status 0-4 means the gateway has the message; then `AT+SBDD0`
clears the modem's outgoing buffer. Every wait has a deadline and stops early when `stopping()`.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from detector.compact import MAX_MESSAGE

COMMAND_S = 5.0  # an ordinary command's answer
SESSION_S = 90.0  # AT+SBDIX: the modem gives up on a session by itself well within this
# +SBDIX MO statuses worth naming in a line (Iridium ISU AT Command Reference)
MO_STATUS = {
    10: "gateway: call did not complete in the allowed time",
    13: "gateway: session did not complete",
    15: "access is denied",
    17: "gateway not responding (local session timeout)",
    18: "connection lost (RF drop)",
    32: "no network service",
    35: "modem busy",
    36: "try later: the gateway is holding sessions back",
}
SBDWB_RESULT = {1: "timed out waiting for the bytes", 2: "checksum wrong", 3: "size wrong"}


class ModemError(Exception):
    """The modem answered ERROR, something unexpected, or nothing before the deadline."""


class SessionFailed(ModemError):
    """AT+SBDIX ran but the gateway did not take the message (MO status 5 and up)."""

    def __init__(self, mo_status: int) -> None:
        self.mo_status = mo_status
        super().__init__(f"SBD session failed: MO status {mo_status} ({describe(mo_status)})")


def describe(mo_status: int) -> str:
    return MO_STATUS.get(mo_status, "see the modem's AT command reference")


@dataclass(frozen=True)
class Session:
    """What `+SBDIX:` reported."""

    mo_status: int
    momsn: int  # the modem's own mobile-originated message sequence number
    mt_status: int
    mtmsn: int
    mt_length: int
    mt_queued: int

    @property
    def delivered(self) -> bool:
        return 0 <= self.mo_status <= 4


def checksum(data: bytes) -> bytes:
    """SBDWB's checksum: the low 2 bytes of the sum of the message's bytes, high byte first."""
    return (sum(data) & 0xFFFF).to_bytes(2, "big")


def parse_sbdix(line: str) -> Session:
    """`+SBDIX: 0, 12, 0, 0, 0, 0` -> Session; ModemError if it is not one."""
    head, _, rest = line.partition(":")
    try:
        numbers = [int(x) for x in rest.split(",")]
    except ValueError:
        numbers = []
    if head.strip() != "+SBDIX" or len(numbers) != 6:
        raise ModemError(f"unexpected answer to AT+SBDIX: {line!r}")
    return Session(*numbers)


class Modem:
    """One modem on one serial port; not thread-safe (the SBD output's worker owns it)."""

    def __init__(self, port: object, stopping: Callable[[], bool] = lambda: False) -> None:
        self.port = port
        self.stopping = stopping
        self._pending = b""

    def start(self) -> None:
        """Echo off, no hardware flow control (a 3-wire serial line), then a plain AT."""
        for command in ("AT", "ATE0", "AT&K0"):
            self.command(command)

    def send(self, message: bytes) -> Session:
        """Hand one message to the gateway; SessionFailed when the satellite did not take it."""
        self.write_buffer(message)
        session = self.session()
        if not session.delivered:
            raise SessionFailed(session.mo_status)
        try:
            self.command("AT+SBDD0")  # the buffer went: clear it (answers 0, then OK)
        except ModemError:
            pass  # delivered all the same, and the next AT+SBDWB overwrites the buffer
        return session

    def write_buffer(self, message: bytes) -> None:
        if not 1 <= len(message) <= MAX_MESSAGE:
            raise ValueError(f"an SBD message is 1-{MAX_MESSAGE} bytes, not {len(message)}")
        self._write(f"AT+SBDWB={len(message)}\r".encode())
        self._expect("READY", COMMAND_S)
        self._write(message + checksum(message))
        result = self._expect_result(COMMAND_S)
        if result != "0":
            why = SBDWB_RESULT.get(int(result) if result.isdigit() else -1, "unknown")
            raise ModemError(f"AT+SBDWB refused the message: result {result} ({why})")

    def session(self) -> Session:
        lines = self.command("AT+SBDIX", SESSION_S)
        for line in lines:
            if line.startswith("+SBDIX"):
                return parse_sbdix(line)
        raise ModemError(f"AT+SBDIX answered without +SBDIX: {lines!r}")

    def command(self, text: str, timeout_s: float = COMMAND_S) -> list[str]:
        """Send one command; the lines before its OK (ModemError on ERROR or no answer)."""
        self._write(f"{text}\r".encode())
        deadline = time.monotonic() + timeout_s
        lines = []
        while True:
            line = self._readline(deadline, text)
            if line == "OK":
                return lines
            if line == "ERROR":
                raise ModemError(f"{text} answered ERROR")
            if line != text:  # the echo, before ATE0 took effect
                lines.append(line)

    def _expect(self, wanted: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while (line := self._readline(deadline, wanted)) != wanted:
            if line == "ERROR":
                raise ModemError(f"ERROR while waiting for {wanted}")

    def _expect_result(self, timeout_s: float) -> str:
        """SBDWB's one-digit result line, then its OK."""
        deadline = time.monotonic() + timeout_s
        result = self._readline(deadline, "the AT+SBDWB result")
        while self._readline(deadline, "OK after the AT+SBDWB result") != "OK":
            pass
        return result

    def _write(self, data: bytes) -> None:
        self.port.write(data)  # type: ignore[attr-defined]

    def _readline(self, deadline: float, waiting_for: str) -> str:
        """The next non-empty line (the modem ends them with CR LF)."""
        while True:
            self._pending = self._pending.lstrip(b"\r\n")
            ends = [i for i in (self._pending.find(b"\r"), self._pending.find(b"\n")) if i >= 0]
            if ends:
                line, self._pending = self._pending[: min(ends)], self._pending[min(ends) + 1 :]
                return line.decode("ascii", "replace").strip()
            if self.stopping():
                raise ModemError(f"stopped while waiting for {waiting_for}")
            if time.monotonic() > deadline:
                raise ModemError(f"no answer from the modem (waiting for {waiting_for})")
            self._pending += self._read()

    def _read(self) -> bytes:
        """What arrived: one byte within the port's timeout, then whatever is already waiting."""
        first = self.port.read(1)  # type: ignore[attr-defined]
        waiting = getattr(self.port, "in_waiting", 0) if first else 0
        return first + (self.port.read(waiting) if waiting else b"")  # type: ignore[attr-defined]
