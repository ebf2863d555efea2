"""The MQTT output (`--mqtt mqtt://host:1883/topic`): events at QoS 1, heartbeats, and a retained
`online`/`offline` state (the offline one is also the broker's last will, for a lost buoy).

paho-mqtt (the `mqtt` extra) runs the network on its own thread; `publish` only queues, into a
bounded queue, so a broker that is down or slow never blocks scoring or the event log: a full
queue drops the message and counts it (the log still has it). paho retries unacknowledged QoS 1
messages and reconnects with backoff. `mqtts://` turns on TLS; the optional auth file holds
the user name on its first line and the password on its second.
"""

from pathlib import Path
from urllib.parse import urlsplit

from detector.errors import WhaleError
from detector.outputs import Output
from detector.settings import Settings

QUEUE_MAX = 10_000  # messages held while the broker is away; more are dropped and counted
RECONNECT_MAX_S = 30
CLOSE_WAIT_S = 2.0  # at most this long to flush the queue and say "offline" at exit
SCHEMES = {"mqtt": 1883, "mqtts": 8883}


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, topic) of mqtt[s]://host[:port]/topic; ValueError if malformed."""
    parts = urlsplit(url)
    topic = parts.path.strip("/")
    if parts.scheme not in SCHEMES or not parts.hostname or not topic:
        raise ValueError(f"expected mqtt://host[:port]/topic or mqtts://..., got {url!r}")
    if any(c in topic for c in "#+"):
        raise ValueError(f"topic {topic!r} holds a wildcard (# or +)")
    try:
        port = parts.port or SCHEMES[parts.scheme]
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    return parts.scheme, parts.hostname, port, topic


def read_auth(path: Path) -> tuple[str, str]:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise WhaleError(f"cannot read MQTT auth file {path}: {e.strerror or e}") from None
    if not lines or not lines[0]:
        raise WhaleError(f"MQTT auth file {path}: first line must be the user name")
    return lines[0], lines[1] if len(lines) > 1 else ""


class MqttOutput(Output):
    """Publishes to `<topic>/upcall` (QoS 1), `<topic>/status` and retained `<topic>/state`."""

    name = "mqtt"

    def __init__(
        self,
        url: str,
        client_id: str,
        auth: tuple[str, str] | None = None,
        ca_file: Path | None = None,
    ) -> None:
        import paho.mqtt.client as paho

        self.url = url
        scheme, host, port, self.topic = parse_url(url)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_queued_messages_set(QUEUE_MAX)
        self.client.reconnect_delay_set(1, RECONNECT_MAX_S)
        self.client.will_set(f"{self.topic}/state", "offline", qos=1, retain=True)
        if auth is not None:
            self.client.username_pw_set(*auth)
        if scheme == "mqtts":
            self.client.tls_set(ca_certs=str(ca_file) if ca_file else None)
        self.client.on_connect = self._on_connect
        self.sent = 0  # queued for the broker
        self.dropped = 0  # refused: the queue was full (or a heartbeat while disconnected)
        self.connected = False
        self._ok = paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN  # NO_CONN: queued for later
        self.client.connect_async(host, port, keepalive=30)  # never waits for the broker
        self.client.loop_start()

    def _on_connect(self, client: object, userdata: object, flags: object, reason, props) -> None:
        self.connected = not reason.is_failure
        if self.connected:  # also after every reconnect: the will may have said offline
            self.client.publish(f"{self.topic}/state", "online", qos=1, retain=True)

    def _publish(self, sub: str, obj: dict, qos: int) -> None:
        from detector.records import encode

        info = self.client.publish(f"{self.topic}/{sub}", encode(obj), qos=qos)
        if info.rc == self._ok[0] or (info.rc in self._ok and qos > 0):  # QoS 0 waits for none
            self.sent += 1
        else:
            self.dropped += 1

    def on_event(self, event: dict) -> None:
        self._publish("upcall", event, qos=1)

    def on_status(self, status: dict) -> None:
        self._publish("status", status, qos=0)

    def status_fields(self) -> dict:
        return {"mqtt": {"connected": self.connected, "sent": self.sent, "dropped": self.dropped}}

    def describe(self) -> str:
        return f"MQTT {self.url}"

    def close(self) -> None:
        """Say offline (retained), give queued messages CLOSE_WAIT_S to go, then disconnect."""
        info = self.client.publish(f"{self.topic}/state", "offline", qos=1, retain=True)
        if self.connected:
            try:
                info.wait_for_publish(CLOSE_WAIT_S)  # QoS 1 is in order: the events went first
            except (RuntimeError, ValueError):
                pass  # the connection went meanwhile: the log has every event
        self.client.disconnect()
        self.client.loop_stop()


def open_output(settings: Settings) -> MqttOutput:
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        raise WhaleError("--mqtt needs paho-mqtt: pip install 'whale-listen[mqtt]'") from None
    auth = read_auth(settings.mqtt_auth_file) if settings.mqtt_auth_file else None
    client_id = f"whale-listen-{settings.station}"
    return MqttOutput(settings.mqtt, client_id, auth, settings.mqtt_ca_file)
