"""A scripted Iridium 9602 on the far side of a pseudo-terminal: the one test double of the SBD
output, for the hardware no test machine has.

`ScriptedModem().path` is a real tty (the pty's slave end) that pyserial opens like a USB serial
adapter; a thread on the master end answers the SBD AT commands as the ISU AT Command Reference
describes them: it echoes until `ATE0`, answers `AT+SBDWB=<len>` with `READY`, reads the bytes
and checks their 2-byte checksum (result 0, or 2 when it is wrong), answers `AT+SBDIX` with the
next MO status of its script (0 once the script is spent, 32 "no network service" while `down`),
and clears its buffer on `AT+SBDD0`. Messages the "gateway" took are in `delivered`.
"""

import os
import select
import threading
import tty


def sbd_checksum(payload: bytes) -> bytes:
    """The manual's checksum, written again here (not imported: the test must not trust it)."""
    return (sum(payload) & 0xFFFF).to_bytes(2, "big")


class ScriptedModem:
    def __init__(self, mo_statuses: list[int] | None = None) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.script = list(mo_statuses or [])
        self.down = False  # every session fails with 32 (no network service)
        self.corrupt_next = False  # line noise: one byte of the next SBDWB payload flipped
        self.delivered: list[bytes] = []
        self.sessions: list[int] = []  # the MO status each AT+SBDIX answered
        self.commands: list[str] = []
        self.checksum_errors = 0
        self.buffer = b""
        self.momsn = 0
        self.echo = True
        self._pending = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.master)
        os.close(self.slave)

    def _send(self, *lines: str) -> None:
        for line in lines:
            os.write(self.master, f"\r\n{line}\r\n".encode())

    def _more(self) -> bool:
        if not select.select([self.master], [], [], 0.05)[0]:
            return False
        try:
            self._pending += os.read(self.master, 4096)
        except OSError:  # no reader on the slave end for a moment (the port reopening)
            return False
        return True

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._more()
            while b"\r" in self._pending:
                line, self._pending = self._pending.split(b"\r", 1)
                self._answer(line.decode("ascii", "replace").strip())

    def _read_exact(self, n: int) -> bytes | None:
        while len(self._pending) < n:
            if self._stop.is_set():
                return None
            self._more()
        data, self._pending = self._pending[:n], self._pending[n:]
        return data

    def _answer(self, command: str) -> None:
        if not command:
            return
        self.commands.append(command)
        if self.echo:
            os.write(self.master, f"{command}\r".encode())
        if command == "ATE0":
            self.echo = False
        if command.startswith("AT+SBDWB="):
            size = int(command.split("=", 1)[1])
            if not 1 <= size <= 340:
                return self._send("3", "OK")
            self._send("READY")
            data = self._read_exact(size + 2)
            if data is None:
                return
            payload, check = data[:size], data[size:]
            if self.corrupt_next:
                self.corrupt_next = False
                payload = bytes([payload[0] ^ 0xFF]) + payload[1:]
            if sbd_checksum(payload) != check:
                self.checksum_errors += 1
                return self._send("2", "OK")
            self.buffer = payload
            self._send("0", "OK")
        elif command == "AT+SBDIX":
            status = 32 if self.down else (self.script.pop(0) if self.script else 0)
            self.sessions.append(status)
            if status <= 4 and self.buffer:
                self.delivered.append(self.buffer)
                self.momsn += 1
            self._send(f"+SBDIX: {status}, {self.momsn}, 0, 0, 0, 0", "OK")
        elif command == "AT+SBDD0":
            self.buffer = b""
            self._send("0", "OK")
        elif command.startswith("AT"):
            self._send("OK")
        else:
            self._send("ERROR")
