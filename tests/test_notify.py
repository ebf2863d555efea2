import os
import socket
import uuid

import pytest

from detector.notify import Notifier


def _listener(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def systemd_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    sock = _listener(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def test_ready_status_stopping_arrive_as_datagrams(systemd_socket):
    with Notifier() as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert notifier.status("listening on hw:1\n3 events")
        assert notifier.stopping()
    assert systemd_socket.recv(4096) == b"READY=1"
    assert systemd_socket.recv(4096) == b"STATUS=listening on hw:1 3 events"
    assert systemd_socket.recv(4096) == b"STOPPING=1"


def test_abstract_socket(monkeypatch):
    name = f"whale-listen-test-{uuid.uuid4().hex}"
    sock = _listener("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        with Notifier() as notifier:
            assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_watchdog_sends_only_when_half_the_interval_has_passed(systemd_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    with Notifier() as notifier:
        assert notifier.watchdog_interval == 30.0
        sent = [notifier.watchdog(now=t) for t in (100.0, 101.0, 114.9, 115.0, 116.0, 130.0)]
    assert sent == [True, False, False, True, False, True]
    systemd_socket.settimeout(0.5)
    received = []
    try:
        while True:
            received.append(systemd_socket.recv(4096))
    except TimeoutError:
        pass
    assert received == [b"WATCHDOG=1"] * 3


def test_watchdog_meant_for_another_process_is_ignored(systemd_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    notifier = Notifier()
    assert notifier.watchdog_interval is None
    assert not notifier.watchdog()


def test_no_op_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert notifier.sent == 0


def test_send_failure_is_logged_once_and_never_raised(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    with caplog.at_level("WARNING", logger="detector.notify"):
        assert not notifier.ready()
        assert not notifier.status("still nobody")
    assert len(caplog.records) == 1
    assert "cannot notify systemd" in caplog.records[0].getMessage()
    notifier.close()
