"""The review station without a browser: its tables in the shore database, the real HTTP server
on 127.0.0.1 (login, session cookie, CSRF, clips only by event id), the export, and whale-train
reading the export (confirmed calls positives, rejected detections hard negatives, counted)."""

import csv
import http.client
import io
import re
import shutil
import sqlite3
import threading
import wave
from pathlib import Path
from urllib.parse import urlencode

import pytest
import soundfile as sf
from click.testing import CliRunner

from detector import review_export, reviewdb, shoredb
from detector.cli import main as listen_main
from detector.errors import UsageError
from detector.eventlog import read_events
from detector.review_server import ReviewApp, make_server
from detector.reviewdb import QueueFilter
from tests.review_data import make_shore

PASSWORD = "tide-and-kelp"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, shipped_model):
    """One shore database from two real replays; tests work on copies of it."""
    shore = make_shore(tmp_path_factory.mktemp("shore"), shipped_model)
    conn = shoredb.connect(shore.db)
    reviewdb.add_user(conn, "ann", PASSWORD)
    conn.close()
    return shore


@pytest.fixture
def shore(pristine, tmp_path):
    db = tmp_path / "shore.db"
    shutil.copy(pristine.db, db)
    return type(pristine)(db, pristine.clips, pristine.events)


class Client:
    """Plain HTTP to the server, redirects not followed, the session cookie kept."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""

    def request(self, method: str, path: str, form: dict | None = None, **headers: str):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        body = urlencode(form) if form is not None else None
        head = {"Cookie": self.cookie} if self.cookie else {}
        if body is not None:
            head["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body, headers={**head, **headers})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        return response, data

    def login(self, user: str = "ann", password: str = PASSWORD):
        response, data = self.request("POST", "/login", {"user": user, "password": password})
        cookie = response.getheader("Set-Cookie") or ""
        if cookie:
            self.cookie = cookie.split(";")[0]
        return response, cookie

    def csrf(self) -> str:
        _, page = self.request("GET", "/queue")
        return re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()


@pytest.fixture
def server(shore):
    httpd = make_server(ReviewApp(shore.db, shore.clips), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield Client(httpd.server_address[1]), shore
    httpd.shutdown()
    httpd.server_close()


def verdicts(db: Path) -> dict:
    conn = shoredb.connect(db)
    rows = {
        r["event_id"]: (r["verdict"], r["reviewer"]) for r in conn.execute("SELECT * FROM verdicts")
    }
    conn.close()
    return rows


# -- the database --------------------------------------------------------------------------------
def test_a_schema_1_database_gains_the_review_tables_and_keeps_its_events(tmp_path, pristine):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path, isolation_level=None)
    old.executescript(shoredb.MIGRATIONS[0] + "PRAGMA user_version=1;")
    old.close()
    conn = shoredb.connect(path)
    shoredb.add_event(conn, pristine.events[0])
    conn.close()
    conn = shoredb.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shoredb.SCHEMA_VERSION == 2
    assert [e["id"] for e in shoredb.events(conn)] == [pristine.events[0]["id"]]
    reviewdb.add_user(conn, "ann", PASSWORD)
    reviewdb.set_verdict(conn, pristine.events[0]["id"], "upcall", "ann")
    with pytest.raises(sqlite3.IntegrityError):  # a verdict needs a stored event
        reviewdb.set_verdict(conn, "no-such-event", "upcall", "ann")


def test_passwords_are_salted_scrypt_keys(tmp_path):
    conn = shoredb.connect(tmp_path / "shore.db")
    assert reviewdb.add_user(conn, "ann", PASSWORD)
    assert reviewdb.add_user(conn, "bob", PASSWORD)
    rows = {r["name"]: r for r in conn.execute("SELECT * FROM users")}
    assert rows["ann"]["hash"] != rows["bob"]["hash"]  # same password, own salts
    assert PASSWORD.encode() not in rows["ann"]["hash"] + rows["ann"]["salt"]
    assert rows["ann"]["kdf"].startswith("scrypt:")
    assert reviewdb.check_password(conn, "ann", PASSWORD)
    assert not reviewdb.check_password(conn, "ann", PASSWORD + "x")
    assert not reviewdb.check_password(conn, "carol", PASSWORD)
    assert not reviewdb.add_user(conn, "ann", "a new password")  # a new password, same user
    assert reviewdb.check_password(conn, "ann", "a new password")
    assert not reviewdb.check_password(conn, "ann", PASSWORD)
    with pytest.raises(UsageError, match="at least 8"):
        reviewdb.add_user(conn, "dan", "short")


def test_a_verdict_is_kept_with_its_history_and_can_be_reopened(shore):
    conn = shoredb.connect(shore.db)
    first = shore.events[0]["id"]
    reviewdb.set_verdict(conn, first, "unsure", "ann")
    reviewdb.set_verdict(conn, first, "upcall", "ann")
    assert reviewdb.event(conn, first)["verdict"] == "upcall"
    assert first not in [r["id"] for r in reviewdb.queue(conn, QueueFilter())]
    assert reviewdb.reopen(conn, first, "ann")
    assert not reviewdb.reopen(conn, first, "ann")  # already open: nothing to record
    assert first in [r["id"] for r in reviewdb.queue(conn, QueueFilter())]
    actions = [(h["action"], h["verdict"]) for h in reviewdb.history(conn, first)]
    assert actions == [("verdict", "unsure"), ("verdict", "upcall"), ("reopen", None)]
    with pytest.raises(UsageError):
        reviewdb.set_verdict(conn, first, "maybe", "ann")


def test_the_queue_is_newest_first_and_filters_by_station_day_and_score(shore):
    conn = shoredb.connect(shore.db)
    everything = reviewdb.queue(conn, QueueFilter())
    assert [r["start"] for r in everything] == sorted(
        (e["start"] for e in shore.events), reverse=True
    )
    a = reviewdb.queue(conn, QueueFilter(station="buoy-a"))
    assert a and {r["station"] for r in a} == {"buoy-a"}
    day = reviewdb.queue(conn, QueueFilter(date="2009-03-29"))
    assert day and {r["station"] for r in day} == {"buoy-b"}  # buoy-b's recording is that day
    cut = sorted(e["score"] for e in shore.events)[len(shore.events) // 2]
    high = reviewdb.queue(conn, QueueFilter(min_score=cut))
    assert high and all(r["score"] >= cut for r in high)
    assert len(high) == sum(e["score"] >= cut for e in shore.events)
    newest, second = everything[0], everything[1]
    assert reviewdb.neighbour(conn, newest, QueueFilter(), older=True) == second["id"]
    assert reviewdb.neighbour(conn, newest, QueueFilter(), older=False) is None


# -- the server ----------------------------------------------------------------------------------
def test_every_page_but_the_login_needs_a_session(server):
    client, shore = server
    event_id = shore.events[0]["id"]
    for path in ("/queue", "/stations", f"/event/{event_id}", f"/event/{event_id}/audio.wav"):
        response, _ = client.request("GET", path)
        assert response.status == 303 and response.getheader("Location").startswith("/login")
    response, _ = client.request("POST", f"/event/{event_id}/verdict", {"verdict": "upcall"})
    assert response.status == 403
    response, _ = client.request("GET", "/login")
    assert response.status == 200
    assert verdicts(shore.db) == {}


def test_login_sets_an_httponly_samesite_strict_cookie_and_a_wrong_password_is_refused(server):
    client, _ = server
    response, cookie = client.login(password="not the password")
    assert response.status == 403 and not cookie
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        form = {"user": "ann", "password": PASSWORD, "next": target}
        response, _ = client.request("POST", "/login", form)
        assert response.getheader("Location") == "/queue", target  # no open redirect
    response, cookie = client.login()
    assert response.status == 303
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    response, _ = client.request("GET", "/queue")
    assert response.status == 200
    csrf = client.csrf()
    response, _ = client.request("POST", "/logout", {"csrf": csrf})
    assert response.status == 303
    response, _ = client.request("GET", "/queue")
    assert response.status == 303  # the session is gone with the logout


def test_a_verdict_post_without_the_csrf_token_is_refused(server):
    client, shore = server
    client.login()
    event_id = max(shore.events, key=lambda e: e["start"])["id"]  # the newest: one follows it
    path = f"/event/{event_id}/verdict"
    response, _ = client.request("POST", path, {"verdict": "upcall"})
    assert response.status == 403
    response, _ = client.request("POST", path, {"verdict": "upcall", "csrf": "forged"})
    assert response.status == 403
    assert verdicts(shore.db) == {}
    csrf = client.csrf()
    evil = {"Origin": "http://evil.example"}
    response, _ = client.request("POST", path, {"verdict": "upcall", "csrf": csrf}, **evil)
    assert response.status == 403  # another site's form, even with the token
    assert verdicts(shore.db) == {}
    form = {"verdict": "not", "csrf": csrf, "back": "status=unreviewed"}
    response, _ = client.request("POST", path, form)
    assert response.status == 303 and response.getheader("Location").startswith("/event/")
    assert verdicts(shore.db) == {event_id: ("not", "ann")}


def test_clip_files_are_served_only_by_event_id_inside_the_clips_folder(server, tmp_path):
    client, shore = server
    client.login()
    secret = shore.clips.parent / "secret.flac"
    shutil.copy(next(shore.clips.glob("*.flac")), secret)  # a real clip, outside the folder
    for path in ("/event/../../etc/passwd", "/event/%2e%2e%2f%2e%2e%2fetc%2fpasswd/audio.wav",
                 "/static/../shore.db", "/clips/secret.flac", f"/{secret}",
                 "/event/..%2fsecret.flac/audio.wav"):  # fmt: skip
        response, data = client.request("GET", path)
        assert response.status in (400, 404), path
        assert not data.startswith(b"RIFF") and b"SQLite" not in data
    conn = shoredb.connect(shore.db)
    for n, clip in enumerate(("../secret.flac", str(secret), "/etc/passwd", "link.flac")):
        event = {**shore.events[0], "id": f"crafted-{n}", "clip": clip}
        shoredb.add_event(conn, event)
    conn.close()
    (shore.clips / "link.flac").symlink_to(secret)  # a link in the folder pointing out of it
    try:
        for n in range(4):
            for media in ("audio.wav", "spectrogram.png"):
                response, _ = client.request("GET", f"/event/crafted-{n}/{media}")
                assert response.status == 404, (n, media)
    finally:
        (shore.clips / "link.flac").unlink()
        secret.unlink()


def test_the_audio_is_an_8_khz_wav_at_each_speed(server):
    client, shore = server
    client.login()
    event = shore.events[0]
    frames = sf.info(event["clip"]).frames
    for speed, factor in ((4, 1), (2, 2), (1, 4)):
        response, data = client.request("GET", f"/event/{event['id']}/audio.wav?speed={speed}")
        assert response.status == 200 and response.getheader("Content-Type") == "audio/wav"
        with wave.open(io.BytesIO(data)) as wav:
            assert wav.getframerate() == 8000  # browsers decode >= 3 kHz, not 2 kHz
            assert wav.getnframes() == frames * factor  # 4x: the clip's own samples, 4x faster
    response, data = client.request("GET", f"/event/{event['id']}/audio.wav?speed=4",
                                    Range="bytes=0-99")  # fmt: skip
    assert response.status == 206 and len(data) == 100
    response, _ = client.request("GET", f"/event/{event['id']}/audio.wav?speed=3")
    assert response.status == 400


def test_the_spectrogram_is_the_daemons_png_or_drawn_from_the_clip(server):
    client, shore = server
    client.login()
    event = shore.events[1]
    beside = Path(event["clip"]).with_suffix(".png")
    response, data = client.request("GET", f"/event/{event['id']}/spectrogram.png")
    assert response.status == 200 and data == beside.read_bytes()
    kept = beside.read_bytes()
    beside.unlink()
    try:
        response, data = client.request("GET", f"/event/{event['id']}/spectrogram.png")
        assert response.status == 200 and data.startswith(b"\x89PNG")
        assert data[16:24] == kept[16:24]  # the same width and height (IHDR)
    finally:
        beside.write_bytes(kept)


def test_pages_show_the_queue_a_detection_and_station_health(server):
    client, shore = server
    client.login()
    _, page = client.request("GET", "/queue?station=buoy-a")
    ids_a = {e["id"] for e in shore.events if e["station"] == "buoy-a"}
    shown = set(re.findall(rb'data-href="/event/([^?"]+)', page))
    assert {i.decode() for i in shown} == ids_a
    response, page = client.request("GET", "/queue?date=28-03-2009")
    assert response.status == 400 and b"YYYY-MM-DD" in page
    event = shore.events[0]
    _, page = client.request("GET", f"/event/{event['id']}")
    for part in (b'id="player"', b'id="spectrogram"', b'value="upcall"', b"Not reviewed"):
        assert part in page
    _, page = client.request("GET", "/stations")
    row_b = re.search(rb"<tr><td><a [^>]*>buoy-b</a></td>(.*?)</tr>", page).group(1)
    cells = re.findall(rb"<td>([^<]*)</td>", row_b)
    assert cells[1:5] == [b"up", b"0.25 s", b"0.0 s", b"12"]  # source, lag, silence, dropped
    response, _ = client.request("GET", "/event/no-such-event")
    assert response.status == 404


# -- export and training --------------------------------------------------------------------------
def _judge(shore) -> dict[str, str]:
    """Two confirmed, two rejected, one unsure verdict."""
    kinds = ("upcall", "upcall", "not", "not", "unsure")
    chosen = {e["id"]: kind for e, kind in zip(shore.events, kinds, strict=False)}
    conn = shoredb.connect(shore.db)
    for event_id, verdict in chosen.items():
        reviewdb.set_verdict(conn, event_id, verdict, "ann")
    conn.close()
    return chosen


def _export(shore, out: Path) -> str:
    result = CliRunner().invoke(
        listen_main,
        ["review", "--db", str(shore.db), "--clips", str(shore.clips), "--export", str(out)],
    )
    assert result.exit_code == 0, result.output
    return result.output


def test_the_export_tables_are_what_whale_train_reads(shore, tmp_path):
    pytest.importorskip("librosa", reason="whale-train's data loaders need the train extra")
    from train.data import detect_layout, load_recordings
    from train.sampler import WindowSampler

    chosen = _judge(shore)
    for name in ("labels.csv", "labels.txt"):
        out = tmp_path / "export" / name
        out.parent.mkdir(exist_ok=True)
        said = _export(shore, out)
        assert "wrote 5 verdicts (2 upcall, 2 not-upcall, 1 unsure)" in said
        assert detect_layout(out) == "annotations"
        recordings = {r.path.stem: r for r in load_recordings(out)}
        expected = {i: v for i, v in chosen.items() if v != "unsure"}  # unsure: not evidence
        assert set(recordings) == set(expected)
        for event_id, verdict in expected.items():
            rec = recordings[event_id]
            assert rec.reviewed
            assert (len(rec.calls), len(rec.rejected)) == (
                (1, 0) if verdict == "upcall" else (0, 1)
            )
            start, end = (rec.calls or rec.rejected)[0]
            event = next(e for e in shore.events if e["id"] == event_id)
            assert end - start == pytest.approx(
                event["offset_end_s"] - event["offset_start_s"], abs=1e-3
            )
        sampler = WindowSampler(list(recordings.values()), seed=1)
        assert len(sampler.calls) == 2 and sampler.rejected  # positives and hard negatives


def test_export_needs_the_clips_folder_and_a_table_name(shore, tmp_path):
    runner = CliRunner()
    result = runner.invoke(listen_main, ["review", "--db", str(shore.db), "--export", "x.csv"])
    assert result.exit_code == 64 and "needs --clips" in result.output
    result = runner.invoke(
        listen_main,
        [
            "review",
            "--db",
            str(shore.db),
            "--clips",
            str(shore.clips),
            "--export",
            str(tmp_path / "x.json"),
        ],
    )
    assert result.exit_code == 64 and ".csv" in result.output
    result = runner.invoke(listen_main, ["review", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 2 and "no database" in result.output
    result = runner.invoke(listen_main, ["review", "--db", str(shore.db), "--listen", "8080"])
    assert result.exit_code == 64 and "HOST:PORT" in result.output


def test_add_user_reads_the_password_from_stdin(tmp_path):
    db = tmp_path / "shore.db"
    result = CliRunner().invoke(
        listen_main, ["review", "--db", str(db), "--add-user", "eve"], input="p4ssw0rd-long\n"
    )
    assert result.exit_code == 0 and "added reviewer eve" in result.output
    conn = shoredb.connect(db)
    assert reviewdb.check_password(conn, "eve", "p4ssw0rd-long")
    conn.close()
    result = CliRunner().invoke(
        listen_main, ["review", "--db", str(db), "--add-user", "eve"], input="short\n"
    )
    assert result.exit_code == 64 and "at least 8" in result.output


def test_a_short_training_run_counts_the_reviewed_examples(shore, tmp_path):
    pytest.importorskip("torch", reason="whale-train needs the train extra")
    from train.cli import main as train_main

    _judge(shore)
    labels = tmp_path / "labels.csv"
    _export(shore, labels)
    args = [
        "train",
        "--data",
        str(labels),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(tmp_path / "run"),
    ]
    result = CliRunner().invoke(train_main, args)
    assert result.exit_code == 0, result.output
    assert (
        "from review: 4 examples in 4 event clips: 2 confirmed calls (positives), " in result.output
    )
    assert "2 rejected detections (hard negatives)" in result.output
    assert (tmp_path / "run" / "upcall.onnx").is_file()


def test_export_summary_counts_reviewed_events_without_a_clip(shore, tmp_path):
    conn = shoredb.connect(shore.db)
    reviewdb.set_verdict(conn, shore.events[0]["id"], "upcall", "ann")
    rows = reviewdb.reviewed(conn)
    conn.close()
    summary = review_export.export(rows, tmp_path / "l.csv", tmp_path)  # a folder without clips
    assert summary.no_clip == 1 and "left out" in summary.describe()


# -- whale-train's side: the loaders and the sampler ----------------------------------------------
def test_not_rows_are_rejected_spans_and_unsure_rows_are_left_out(tmp_path):
    pytest.importorskip("librosa", reason="whale-train's data loaders need the train extra")
    from train.data import load_labels

    table = tmp_path / "labels.csv"
    table.write_text(
        "filename,start,end,label,event_id\n"
        "a.flac,1.0,3.0,upcall,ida\nb.flac,1.0,2.5,not-upcall,idb\nc.flac,1.0,3.0,unsure,idc\n"
    )
    labels = load_labels(table)
    assert set(labels) == {"a.flac", "b.flac"}  # c: no evidence either way
    assert (labels["a.flac"].calls, labels["a.flac"].rejected) == ([(1.0, 3.0)], [])
    assert (labels["b.flac"].calls, labels["b.flac"].rejected) == ([], [(1.0, 2.5)])
    assert labels["a.flac"].reviewed and labels["b.flac"].reviewed
    plain = tmp_path / "plain.csv"
    plain.write_text("filename,start,end,label\na.wav,1,2,upcall\n")
    assert not load_labels(plain)["a.wav"].reviewed  # no event_id column: not from review
    raven = tmp_path / "labels.txt"
    raven.write_text(
        "Selection\tBegin Time (s)\tEnd Time (s)\tBegin Path\tBegin File\tFile Offset (s)"
        "\tVerdict\n"
        "1\t1.0\t3.0\t/x/a.flac\ta.flac\t1.0\tupcall\n2\t5.0\t6.5\t/x/b.flac\tb.flac\t1.0\tnot-upcall\n"
    )
    labels = load_labels(raven)
    assert labels["/x/a.flac"].calls == [(1.0, 3.0)]
    assert labels["/x/b.flac"].rejected == [(1.0, 2.5)]  # times from the file offset


def test_rejected_spans_are_drawn_as_hard_negatives(tmp_path):
    import numpy as np

    from train.data import Recording
    from train.sampler import WindowSampler, rejected_starts

    rng = np.random.default_rng(2)
    clip = Recording(
        tmp_path / "r.flac", rng.normal(size=8000).astype(np.float32), [], [(1.0, 3.0)]
    )
    starts = rejected_starts(clip, 250)
    assert list(starts) == list(range(0, 4001, 250))  # every window centred in 1-3 s
    assert list(rejected_starts(Recording(clip.path, clip.audio, []), 250)) == []
    sampler = WindowSampler([clip], seed=3)
    drawn = []
    sampler.rejected_negative = lambda: drawn.append(1) or np.zeros(4000)  # count the draws
    for _ in range(400):
        sampler._negative()
    assert 0.05 * 400 < len(drawn) < 0.3 * 400  # about the 15 % share


# -- gather -> review ----------------------------------------------------------------------------
class _Serving:
    """The review server over a database of our own, in a thread, with a logged-in client."""

    def __init__(self, db: Path, clips: Path | None) -> None:
        conn = shoredb.connect(db)
        reviewdb.add_user(conn, "ann", PASSWORD)
        conn.close()
        self.httpd = make_server(ReviewApp(db, clips), "127.0.0.1", 0)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.client = Client(self.httpd.server_address[1])
        self.client.login()

    def station_cells(self, station: str) -> list[str]:
        """The stations page's row of one station, cell by cell (after the name)."""
        _, page = self.client.request("GET", "/stations")
        row = re.search(rf"<tr><td><a [^>]*>{station}</a></td>(.*?)</tr>", page.decode())
        assert row, page
        return re.findall(r"<td>([^<]*)</td>", row.group(1))

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_station_gather_heard_before_its_first_status_shows_no_health_yet(tmp_path):
    """gather makes a station's row with its first event (`note_station`), health columns
    empty until a status arrives: the stations page says so instead of 'never' seen."""
    from tests.test_catchup import Daemon
    from tests.test_gather import _emit, _Running, _stored_seqs, _wait

    db = tmp_path / "shore.db"
    daemon = Daemon(tmp_path / "ev.jsonl", linger_s=0.5)
    try:
        _emit(daemon, 3)  # events, and no status message at all
        running = _Running(db, f"{daemon.endpoint}={daemon.catchup}")
        _wait(lambda: _stored_seqs(db) == [1, 2, 3], 20, "the three events")
        running.stop()
    finally:
        daemon.close()
    serving = _Serving(db, None)
    try:
        cells = serving.station_cells("buoy-x")
    finally:
        serving.close()
    # last seen, source, lag, silence, dropped, last seq, events, unreviewed, last event, endpoint
    assert cells[:6] == ["no status yet", "-", "-", "-", "-", "-"]
    assert cells[6:9] == ["3", "3", "2009-03-28T00:00:01.000Z"]
    assert cells[9] == daemon.endpoint


def test_gather_to_review_each_clip_found_from_the_path_gather_stored(tmp_path, tiny_model):
    """The shore path with the real parts: a daemon replays with --clips and publishes; gather
    stores what it hears; the buoy's folder is synced into the shore's (copied, then the buoy's
    moved away); the review page finds every clip from the event's `clip` as gather stored it
    (the buoy's absolute path), takes the verdicts, and the export has every reviewed event."""
    import subprocess

    from tests.ports import free_port_pair
    from tests.test_cli import DAEMON
    from tests.test_gather import _db_events, _Running, _wait, write_calls

    buoy, db, shore_clips = tmp_path / "buoy", tmp_path / "shore.db", tmp_path / "shore-clips"
    buoy.mkdir()
    write_calls(buoy / "buoy.wav", seconds=16, every_s=3.5, seed=41)
    endpoint = f"tcp://127.0.0.1:{free_port_pair()}"
    running = _Running(db, endpoint)
    try:
        replay = subprocess.run(
            [*DAEMON, "--replay", "buoy.wav", "--model", tiny_model, "--station", "buoy-r",
             "--events-log", "events.jsonl", "--clips", "clips", "--publish", endpoint,
             "--wait-subscribers", "2", "--heartbeat", "1", "--linger", "20"],
            cwd=buoy, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert replay.returncode == 0, replay.stderr
        logged = read_events(buoy / "events.jsonl")
        assert len(logged) >= 2, replay.stderr
        _wait(lambda: len(_db_events(db)) == len(logged), 20, "every event stored")
    finally:
        running.stop()
    stored = {e["id"]: e for e in _db_events(db)}
    for event in stored.values():  # the buoy's path, which is not a path on shore
        assert event["clip"] == str((buoy / "clips" / f"{event['id']}.flac").resolve())
    shutil.copytree(buoy / "clips", shore_clips)  # what rsync does
    buoy.rename(tmp_path / "buoy-gone")  # nothing is read from the buoy's own folder

    serving = _Serving(db, shore_clips)
    client = serving.client
    try:
        # events, still to review (health: a replay this short may end before its first status)
        assert serving.station_cells("buoy-r")[6:8] == [str(len(logged))] * 2
        csrf = client.csrf()
        for k, event_id in enumerate(stored):
            response, body = client.request("GET", f"/event/{event_id}/audio.wav?speed=4")
            assert response.status == 200 and body.startswith(b"RIFF"), body[:200]
            response, _ = client.request("GET", f"/event/{event_id}/spectrogram.png")
            assert response.status == 200
            verdict = ("upcall", "not")[k % 2]
            response, _ = client.request(
                "POST", f"/event/{event_id}/verdict", {"csrf": csrf, "verdict": verdict}
            )
            assert response.status == 303
        assert serving.station_cells("buoy-r")[7] == "0"  # nothing left to review
    finally:
        serving.close()
    labels = tmp_path / "labels.csv"
    result = CliRunner().invoke(
        listen_main, ["review", "--db", str(db), "--clips", str(shore_clips), "--export",
                      str(labels)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "left out" not in result.output
    with open(labels, newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(r["event_id"] for r in rows) == sorted(stored)
    assert all((tmp_path / r["filename"]).is_file() for r in rows)
