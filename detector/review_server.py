"""The review station's web server: standard-library HTTP, a small router, sessions, CSRF.

http.server's ThreadingHTTPServer is enough for a handful of analysts on one shore machine and
adds no dependency to a package that runs on buoys; TLS and exposure beyond loopback belong to a
reverse proxy in front of it (README, Review station). Every page but the login needs a session
(an HttpOnly, SameSite=Strict cookie); every POST but the login needs the session's CSRF token,
and a POST whose Origin is another site is refused. Each request opens its own SQLite
connection: WAL lets it read while `gather` writes.
"""

import hmac
import json
import math
import re
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from detector import review_media, review_pages, reviewdb, shoredb
from detector.journal import log
from detector.reviewdb import QueueFilter

COOKIE = "wl_review"
SESSION_IDLE_S = 12 * 3600  # a session unused this long is gone
MAX_FORM_BYTES = 64 * 1024
PAGE_SIZE = 200
DEFAULT_SPEED = 4
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@dataclass
class Session:
    user: str
    csrf: str
    used: float = field(default_factory=time.monotonic)


class Sessions:
    """Logged-in analysts, by the random token in their cookie (kept in memory: a restart logs
    everyone out, which costs one login)."""

    def __init__(self) -> None:
        self._by_token: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, user: str) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._by_token[token] = Session(user, secrets.token_urlsafe(32))
        return token

    def find(self, token: str | None) -> Session | None:
        if not token:
            return None
        with self._lock:
            session = self._by_token.get(token)
            if session is None:
                return None
            if time.monotonic() - session.used > SESSION_IDLE_S:
                del self._by_token[token]
                return None
            session.used = time.monotonic()
            return session

    def end(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


def html(text: str, status: int = 200) -> Response:
    return Response(status, text.encode("utf-8"))


def redirect(location: str, **headers: str) -> Response:
    return Response(HTTPStatus.SEE_OTHER, b"", headers={"Location": location, **headers})


class BadRequest(Exception):
    """A request the page cannot answer; the message is shown to the analyst."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Request:
    method: str
    path: str
    target: str  # path and query, as asked
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    token: str | None
    session: Session | None = None


def parse_filter(values: dict[str, str]) -> QueueFilter:
    status = values.get("status") or "unreviewed"
    if status not in ("unreviewed", "reviewed", "all"):
        raise BadRequest(400, f"status {status!r} must be unreviewed, reviewed or all")
    date = values.get("date", "")
    if date and not _DATE.fullmatch(date):
        raise BadRequest(400, f"day {date!r} must be YYYY-MM-DD")
    score = values.get("min_score", "")
    min_score = None
    if score:
        try:
            min_score = float(score)
        except ValueError:
            raise BadRequest(400, f"score {score!r} is not a number") from None
        if not math.isfinite(min_score):
            raise BadRequest(400, f"score {score!r} is not a finite number")
    return QueueFilter(status, values.get("station", "")[:200], date, min_score)


def _first(values: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[0] for k, v in values.items() if v}


def safe_next(target: str) -> str:
    """Where a login may send the browser: a path on this site only."""
    if target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/queue"


class ReviewApp:
    """The pages, each a function of a Request, and the state they share."""

    def __init__(self, db: Path, clips: Path | None, secure_cookie: bool = False) -> None:
        self.db = Path(db)
        self.clips = clips
        self.secure_cookie = secure_cookie
        self.sessions = Sessions()
        self.routes: list[tuple[str, re.Pattern, Callable[..., Response], bool]] = []
        for method, pattern, handler, public in (
            ("GET", r"/", lambda r: redirect("/queue"), False),
            ("GET", r"/login", self.login_form, True),
            ("POST", r"/login", self.login, True),
            ("POST", r"/logout", self.logout, False),
            ("GET", r"/static/review\.js", self.static_js, True),
            ("GET", r"/static/review\.css", self.static_css, True),
            ("GET", r"/queue", self.queue, False),
            ("GET", r"/stations", self.stations, False),
            ("GET", r"/event/([^/]+)", self.detection, False),
            ("GET", r"/event/([^/]+)/spectrogram\.png", self.spectrogram, False),
            ("GET", r"/event/([^/]+)/audio\.wav", self.audio, False),
            ("POST", r"/event/([^/]+)/verdict", self.verdict, False),
            ("POST", r"/event/([^/]+)/reopen", self.reopen, False),
        ):
            self.routes.append((method, re.compile(pattern), handler, public))

    # -- plumbing --------------------------------------------------------------------------
    def connect(self) -> sqlite3.Connection:
        return shoredb.connect(self.db)

    def handle(self, request: Request) -> Response:
        allowed = []
        for method, pattern, handler, public in self.routes:
            match = pattern.fullmatch(request.path)
            if not match:
                continue
            allowed.append(method)
            if method != request.method:
                continue
            request.session = self.sessions.find(request.token)
            if not public and request.session is None:
                if request.method == "GET":
                    return redirect(f"/login?{review_pages.urlencode({'next': request.target})}")
                return self.error(request, 403, "log in first")
            if request.method == "POST" and not public and not self.csrf_ok(request):
                return self.error(request, 403, "missing or wrong CSRF token: reload the page")
            try:
                return handler(request, *match.groups())
            except BadRequest as e:
                return self.error(request, e.status, str(e))
        if allowed:
            return self.error(request, 405, f"{request.method} is not allowed here")
        return self.error(request, 404, "no such page")

    def csrf_ok(self, request: Request) -> bool:
        sent = request.form.get("csrf", "")
        return bool(sent) and hmac.compare_digest(sent, request.session.csrf)

    def error(self, request: Request, status: int, message: str) -> Response:
        session = request.session
        text = review_pages.error_page(
            status, message, session.user if session else None, session.csrf if session else ""
        )
        return html(text, status)

    def _event(self, conn: sqlite3.Connection, event_id: str) -> sqlite3.Row:
        row = reviewdb.event(conn, event_id) if _ID.fullmatch(event_id) else None
        if row is None:
            raise BadRequest(404, f"no detection {event_id!r}")
        return row

    def _clip(self, row: sqlite3.Row) -> Path | None:
        return review_media.clip_path(self.clips, row["clip"])

    # -- login -----------------------------------------------------------------------------
    def login_form(self, request: Request) -> Response:
        return html(review_pages.login_page(safe_next(request.query.get("next", "/queue"))))

    def login(self, request: Request) -> Response:
        user, password = request.form.get("user", ""), request.form.get("password", "")
        target = safe_next(request.form.get("next", "/queue"))
        conn = self.connect()
        try:
            ok = reviewdb.check_password(conn, user, password)
        finally:
            conn.close()
        if not ok:
            log.warning("review: failed login for %r", user)
            return html(review_pages.login_page(target, "wrong user name or password"), 403)
        self.sessions.end(request.token)
        token = self.sessions.start(user)
        secure = "; Secure" if self.secure_cookie else ""
        cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}"
        return redirect(target, **{"Set-Cookie": cookie})

    def logout(self, request: Request) -> Response:
        self.sessions.end(request.token)
        expired = f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        return redirect("/login", **{"Set-Cookie": expired})

    def static_js(self, request: Request) -> Response:
        return Response(200, review_pages.SCRIPT.encode(), "text/javascript; charset=utf-8")

    def static_css(self, request: Request) -> Response:
        return Response(200, review_pages.CSS.encode(), "text/css; charset=utf-8")

    # -- pages -----------------------------------------------------------------------------
    def queue(self, request: Request) -> Response:
        where = parse_filter(request.query)
        try:
            offset = max(0, int(request.query.get("offset", "0")))
        except ValueError:
            raise BadRequest(400, "offset must be a whole number") from None
        conn = self.connect()
        try:
            rows = reviewdb.queue(conn, where, PAGE_SIZE, offset)
            total = reviewdb.count(conn, where)
            names = [r["station"] for r in reviewdb.stations(conn)]
        finally:
            conn.close()
        s = request.session
        text = review_pages.queue_page(rows, total, where, names, offset, PAGE_SIZE, s.user, s.csrf)
        return html(text)

    def stations(self, request: Request) -> Response:
        conn = self.connect()
        try:
            rows = reviewdb.stations(conn)
        finally:
            conn.close()
        return html(review_pages.stations_page(rows, request.session.user, request.session.csrf))

    def detection(self, request: Request, event_id: str) -> Response:
        where = parse_filter(request.query)
        conn = self.connect()
        try:
            row = self._event(conn, event_id)
            history = reviewdb.history(conn, event_id)
            newer = reviewdb.neighbour(conn, row, where, older=False)
            older = reviewdb.neighbour(conn, row, where, older=True)
        finally:
            conn.close()
        s = request.session
        text = review_pages.detection_page(
            row, json.loads(row["record"]), where, self._clip(row) is not None, history,
            newer, older, s.user, s.csrf, DEFAULT_SPEED,
        )  # fmt: skip
        return html(text)

    def _event_clip(self, event_id: str) -> tuple[sqlite3.Row, Path]:
        """A detection's row and its clip file, or 404 when the clips folder has none."""
        conn = self.connect()
        try:
            row = self._event(conn, event_id)
        finally:
            conn.close()
        path = self._clip(row)
        if path is None:
            raise BadRequest(404, "no clip for this detection in the clips folder")
        return row, path

    def spectrogram(self, request: Request, event_id: str) -> Response:
        row, path = self._event_clip(event_id)
        record, duration = json.loads(row["record"]), reviewdb.duration_s(row)
        png = review_media.spectrogram_png(path, record, duration)
        return Response(200, png, "image/png", {"Cache-Control": "private, max-age=3600"})

    def audio(self, request: Request, event_id: str) -> Response:
        try:
            speed = int(request.query.get("speed", str(DEFAULT_SPEED)))
        except ValueError:
            speed = 0
        if speed not in review_media.SPEEDS:
            raise BadRequest(400, f"speed must be one of {review_media.SPEEDS}")
        _, path = self._event_clip(event_id)
        wav = review_media.wav_bytes(review_media.read_clip(path), speed)
        return Response(200, wav, "audio/wav", {"Cache-Control": "private, max-age=3600"})

    def verdict(self, request: Request, event_id: str) -> Response:
        verdict = request.form.get("verdict", "")
        if verdict not in reviewdb.VERDICTS:
            raise BadRequest(400, f"verdict {verdict!r} must be one of {reviewdb.VERDICTS}")
        back = request.form.get("back", "")
        where = parse_filter(_first(parse_qs(back)))
        conn = self.connect()
        try:
            row = self._event(conn, event_id)
            reviewdb.set_verdict(conn, event_id, verdict, request.session.user)
            following = reviewdb.neighbour(conn, row, where, older=True)
        finally:
            conn.close()
        query = review_pages.query(where)
        if following is None:
            return redirect(f"/queue?{query}")
        return redirect(f"/event/{quote(following, safe='')}?{query}")

    def reopen(self, request: Request, event_id: str) -> Response:
        back = request.form.get("back", "")
        conn = self.connect()
        try:
            self._event(conn, event_id)
            reviewdb.reopen(conn, event_id, request.session.user)
        finally:
            conn.close()
        return redirect(f"/event/{event_id}?{back if back.isprintable() else ''}")


def _origin_ok(headers: dict[str, str]) -> bool:
    """A POST from another site's page carries that site's Origin: refuse it."""
    origin = headers.get("origin")
    if not origin:
        return True
    return urlsplit(origin).netloc.lower() == headers.get("host", "").lower()


def handler_for(app: ReviewApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "whale-listen-review"
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve("GET", head=True)

        def do_POST(self) -> None:  # noqa: N802
            self._serve("POST")

        def _serve(self, method: str, head: bool = False) -> None:
            try:
                response = self._respond(method)
            except BadRequest as e:
                response = html(review_pages.error_page(e.status, str(e)), e.status)
            except Exception:  # a bug in a page must not take the server down
                log.exception("review: %s %s failed", method, self.path)
                response = html(review_pages.error_page(500, "internal error (see the log)"), 500)
            self._send(response, head)

        def _respond(self, method: str) -> Response:
            split = urlsplit(self.path)
            headers = {k.lower(): v for k, v in self.headers.items()}
            form: dict[str, str] = {}
            if method == "POST":
                length = headers.get("content-length") or "0"
                length = int(length) if length.isdigit() else MAX_FORM_BYTES + 1
                if length > MAX_FORM_BYTES:
                    raise BadRequest(413, "form too large")
                body = self.rfile.read(length).decode("utf-8", "replace")
                form = _first(parse_qs(body, keep_blank_values=True))
                if not _origin_ok(headers):
                    raise BadRequest(403, "a form from another site is refused")
            try:
                cookie = SimpleCookie(headers.get("cookie", ""))
            except CookieError:
                cookie = SimpleCookie()
            morsel = cookie.get(COOKIE)
            request = Request(
                method,
                split.path,
                self.path,
                _first(parse_qs(split.query)),
                form,
                headers,
                morsel.value if morsel else None,
            )
            return app.handle(request)

        def _send(self, response: Response, head: bool) -> None:
            body = response.body
            status, extra = response.status, dict(response.headers)
            ranged = self._range(len(body)) if status == 200 and body else None
            if ranged is not None:  # media elements seek with Range requests
                start, end = ranged
                extra["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                body, status = body[start : end + 1], HTTPStatus.PARTIAL_CONTENT
            self.send_response(status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(body)))
            if response.content_type.startswith("audio/"):
                self.send_header("Accept-Ranges", "bytes")
            if response.content_type.startswith("text/html"):
                self.send_header("Cache-Control", "no-store")
            for name, value in {**SECURITY_HEADERS, **extra}.items():
                self.send_header(name, value)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _range(self, size: int) -> tuple[int, int] | None:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", "").strip())
            if not match or not (match.group(1) or match.group(2)):
                return None
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:
                start, end = max(0, size - int(match.group(2))), size - 1
            return (start, end) if start <= end < size else None

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("review: " + format, *args)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a browser's open connection never holds up the exit


class _Server6(_Server):
    address_family = socket.AF_INET6


def make_server(app: ReviewApp, host: str, port: int) -> ThreadingHTTPServer:
    """Bound and ready to serve_forever; an IPv6 address (::1) gets an IPv6 socket."""
    return (_Server6 if ":" in host else _Server)((host, port), handler_for(app))
