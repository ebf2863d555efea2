"""The metrics output (`--metrics-port N`): the status counters in Prometheus's text format on
http://127.0.0.1:N/metrics, refreshed each heartbeat, for a Prometheus nearby. `exposition` is
also what `--metrics-textfile` writes for node_exporter (`detector.metrics_textfile`).

Loopback only (reach it through an SSH tunnel); the server runs on its own thread and serves the
last heartbeat's text, so a slow scraper never touches the scoring loop.
"""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from detector.errors import WhaleError
from detector.outputs import Output
from detector.settings import Settings

# status field -> (metric name, type, help)
METRICS = {
    "samples_in": ("samples", "counter", "2 kHz samples scored"),
    "windows_scored": ("windows", "counter", "2-s windows scored"),
    "events": ("events", "counter", "up-call events detected"),
    "dropped_samples": ("dropped_samples", "counter", "samples lost (full ring, card down)"),
    "outages": ("outages", "counter", "times the sound card was lost"),
    "input_overflows": ("input_overflows", "counter", "callbacks where the card dropped input"),
    "unlogged_events": ("unlogged_events", "gauge", "events the event log has not taken yet"),
    "zmq_dropped": ("zmq_dropped", "counter", "ZeroMQ messages dropped on a full queue"),
    "lag_s": ("lag_seconds", "gauge", "audio waiting to be scored"),
    "level_dbfs": ("level_dbfs", "gauge", "RMS level of the last block"),
    "silent_s": ("silent_seconds", "gauge", "seconds of digital silence up to now"),
    "uptime_s": ("uptime_seconds", "gauge", "seconds since the loop started"),
}
NESTED = {"clips": ("saved", "skipped_low_disk", "errors"), "mqtt": ("sent", "dropped")}
MODEL_LABELS = ("name", "sha256", "provider")  # of status "model": whale_listen_model_info
PREFIX = "whale_listen_"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def exposition(status: dict) -> str:
    """Prometheus text format (0.0.4) of one status message; absent or null fields are left out."""
    station = f'station="{_label(status.get("station", ""))}"'
    lines = []
    for key, (name, kind, text) in METRICS.items():
        if isinstance(status.get(key), int | float) and not isinstance(status[key], bool):
            lines += [f"# HELP {PREFIX}{name} {text}", f"# TYPE {PREFIX}{name} {kind}"]
            lines.append(f"{PREFIX}{name}{{{station}}} {status[key]}")
    for group, keys in NESTED.items():
        for key in keys if isinstance(status.get(group), dict) else ():
            name = f"{PREFIX}{group}_{key}"
            lines += [f"# TYPE {name} counter", f"{name}{{{station}}} {status[group][key]}"]
    up = 1 if status.get("source_state") == "up" else 0
    lines += [f"# TYPE {PREFIX}source_up gauge", f"{PREFIX}source_up{{{station}}} {up}"]
    model = status.get("model")
    if isinstance(model, dict):
        labels = ",".join(f'{k}="{_label(model.get(k, ""))}"' for k in MODEL_LABELS)
        name = f"{PREFIX}model_info"
        lines += [f"# HELP {name} the model scoring the windows", f"# TYPE {name} gauge"]
        lines.append(f"{name}{{{station},{labels}}} 1")
    return "\n".join(lines) + "\n"


class MetricsOutput(Output):
    """Serves the latest heartbeat's metrics on 127.0.0.1:port/metrics."""

    name = "metrics"

    def __init__(self, port: int) -> None:
        self.text = ""  # until the first heartbeat
        output = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = output.text.encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes are not journal news
                pass

        try:
            self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        except OSError as e:
            raise WhaleError(f"cannot serve metrics on 127.0.0.1:{port}: {e.strerror}") from None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def on_status(self, status: dict) -> None:
        self.text = exposition(status)

    def describe(self) -> str:
        return f"metrics on http://127.0.0.1:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def open_output(settings: Settings) -> MetricsOutput:
    return MetricsOutput(settings.metrics_port)
