"""The review station's HTML: queue, detection, stations, login; every value escaped.

Plain server-rendered pages with one small script (keyboard shortcuts, playback speed), served
from /static/ so the Content-Security-Policy can forbid inline scripts.
"""

import sqlite3
from html import escape
from urllib.parse import urlencode

from detector.review_media import SPEEDS
from detector.reviewdb import VERDICT_NAMES, QueueFilter, duration_s

CSS = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; background: #f4f4f4; color: #111; }
header { background: #123; color: #eee; padding: 8px 16px; display: flex; gap: 18px;
  align-items: center; }
header a { color: #9cf; } header form { margin-left: auto; }
main { padding: 12px 16px; }
table { border-collapse: collapse; background: #fff; }
td, th { padding: 3px 10px; border-bottom: 1px solid #ddd; text-align: left; }
tr.selected { background: #cde6ff; }
.keys { color: #555; font-size: 13px; }
.verdicts button { font-size: 16px; padding: 6px 14px; margin-right: 8px; }
.upcall { background: #b8f0b8; } .not { background: #f6c0c0; } .unsure { background: #f3e7a8; }
.error { color: #a00; font-weight: bold; }
img.spectrogram { display: block; max-width: 100%; margin: 8px 0; }
"""

SCRIPT = """
"use strict";
function rows() { return Array.from(document.querySelectorAll("tr[data-href]")); }
function select(i) {
  const all = rows();
  if (!all.length) return;
  i = Math.max(0, Math.min(all.length - 1, i));
  all.forEach((r, k) => r.classList.toggle("selected", k === i));
  all[i].scrollIntoView({block: "nearest"});
}
function selected() { return rows().findIndex(r => r.classList.contains("selected")); }
function go(id) { const a = document.getElementById(id); if (a && a.href) location.href = a.href; }
function setSpeed(player, speed) {
  if (!player) return;
  const src = player.dataset.base + "?speed=" + speed;
  if (!player.src.endsWith(src)) player.src = src;  // a new speed: a new WAV
  localStorage.setItem("speed", speed);
  const menu = document.getElementById("speed");
  if (menu) menu.value = speed;
}
document.addEventListener("DOMContentLoaded", () => {
  select(0);
  const player = document.getElementById("player");
  const menu = document.getElementById("speed");
  if (player) setSpeed(player, localStorage.getItem("speed") || player.dataset.speed);
  if (menu) menu.addEventListener("change", () => setSpeed(player, menu.value));
  rows().forEach(r => r.addEventListener("click", () => { location.href = r.dataset.href; }));
});
document.addEventListener("keydown", e => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  if (["INPUT", "SELECT", "TEXTAREA"].includes(e.target.tagName)) return;  // typing
  if (e.target.tagName === "AUDIO" && e.key === " ") return;  // the player's own toggle
  const verdict = {u: "upcall", n: "not", s: "unsure"}[e.key];
  const player = document.getElementById("player");
  if (verdict) {
    const button = document.querySelector("button[name=verdict][value=" + verdict + "]");
    if (button) { e.preventDefault(); button.click(); }
  } else if (e.key === "r") {
    const button = document.getElementById("reopen");
    if (button) { e.preventDefault(); button.click(); }
  } else if (e.key === "j" || e.key === "k") {
    e.preventDefault();
    if (rows().length) select(selected() + (e.key === "j" ? 1 : -1));
    else go(e.key === "j" ? "next" : "prev");
  } else if (e.key === "Enter" || e.key === "o") {
    const i = selected();
    if (i >= 0) { e.preventDefault(); location.href = rows()[i].dataset.href; }
  } else if ((e.key === "p" || e.key === " ") && player) {
    e.preventDefault();
    if (player.paused) player.play(); else player.pause();
  } else if (["1", "2", "4"].includes(e.key) && player) {
    setSpeed(player, e.key);
    player.play();
  } else if (e.key === "q") {
    go("queue");
  }
});
"""


def query(where: QueueFilter, **extra: object) -> str:
    """The filter as a query string, so every link and form keeps the analyst's view."""
    fields = {
        "status": where.status,
        "station": where.station,
        "date": where.date,
        "min_score": "" if where.min_score is None else f"{where.min_score:g}",
        **{k: str(v) for k, v in extra.items()},
    }
    return urlencode({k: v for k, v in fields.items() if v})


def page(title: str, body: str, user: str | None = None, csrf: str = "") -> str:
    nav = ""
    if user:
        nav = (
            '<a href="/queue" id="nav-queue">Queue</a>'
            '<a href="/queue?status=reviewed">Reviewed</a>'
            '<a href="/stations">Stations</a>'
            f'<form method="post" action="/logout">{escape(user)} '
            f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
            "<button>Log out</button></form>"
        )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} - whale-listen review</title>"
        '<link rel="stylesheet" href="/static/review.css">'
        '<script src="/static/review.js"></script></head><body>'
        f"<header><b>whale-listen review</b>{nav}</header><main>{body}</main></body></html>"
    )


def login_page(next_path: str, error: str = "") -> str:
    message = f'<p class="error">{escape(error)}</p>' if error else ""
    return page(
        "Log in",
        f"<h1>Log in</h1>{message}"
        '<form method="post" action="/login">'
        f'<input type="hidden" name="next" value="{escape(next_path)}">'
        '<p><label>User <input name="user" id="user" autofocus autocomplete="username">'
        "</label></p>"
        '<p><label>Password <input name="password" id="password" type="password" '
        'autocomplete="current-password"></label></p>'
        '<p><button id="login">Log in</button></p></form>',
    )


def _filter_form(where: QueueFilter, stations: list[str]) -> str:
    statuses = "".join(
        f'<option value="{s}"{" selected" if s == where.status else ""}>{s}</option>'
        for s in ("unreviewed", "reviewed", "all")
    )
    station_options = '<option value="">all stations</option>' + "".join(
        f'<option value="{escape(s)}"{" selected" if s == where.station else ""}>'
        f"{escape(s)}</option>"
        for s in stations
    )
    score = "" if where.min_score is None else f"{where.min_score:g}"
    return (
        '<form method="get" action="/queue" class="filters">'
        f'<select name="status">{statuses}</select> '
        f'<select name="station">{station_options}</select> '
        f'<label>day (UTC) <input type="date" name="date" value="{escape(where.date)}"></label> '
        f'<label>score &ge; <input name="min_score" size="5" value="{escape(score)}"></label> '
        "<button>Show</button></form>"
    )


def queue_page(
    rows: list, total: int, where: QueueFilter, stations: list[str], offset: int, limit: int,
    user: str, csrf: str,
) -> str:  # fmt: skip
    shown = where.status != "unreviewed"
    lines = []
    for n, row in enumerate(rows, start=offset + 1):
        href = f"/event/{row['id']}?{query(where)}"
        verdict = ""
        if shown:
            verdict = (
                f'<td class="{escape(row["verdict"] or "")}">'
                f"{escape(VERDICT_NAMES.get(row['verdict'], '-') if row['verdict'] else '-')}"
                f"</td><td>{escape(row['reviewer'] or '')}</td>"
            )
        lines.append(
            f'<tr data-href="{escape(href)}"><td>{n}</td>'
            f'<td><a href="{escape(href)}">{escape(row["start"])}</a></td>'
            f"<td>{escape(row['station'])}</td><td>{row['score']:.3f}</td>"
            f"<td>{duration_s(row):.1f} s</td>{verdict}</tr>"
        )
    head = "<tr><th>#</th><th>start (UTC)</th><th>station</th><th>score</th><th>length</th>"
    head += "<th>verdict</th><th>reviewer</th></tr>" if shown else "</tr>"
    more = []
    if offset > 0:
        more.append(f'<a href="/queue?{query(where, offset=max(0, offset - limit))}">newer</a>')
    if offset + len(rows) < total:
        more.append(f'<a href="/queue?{query(where, offset=offset + limit)}">older</a>')
    table = (
        f'<table id="queue">{head}{"".join(lines)}</table>' if rows else "<p>Nothing to review.</p>"
    )
    body = (
        f"<h1>{escape(where.status.capitalize())} detections</h1>"
        f"{_filter_form(where, stations)}"
        f'<p id="count">{total} detection{"s" if total != 1 else ""}, newest first.</p>'
        f"{table}<p>{' '.join(more)}</p>"
        '<p class="keys">Keys: j / k down / up, Enter open.</p>'
    )
    return page("Queue", body, user, csrf)


def detection_page(
    row: sqlite3.Row, record: dict, where: QueueFilter, has_clip: bool, history: list,
    prev_id: str | None, next_id: str | None, user: str, csrf: str, speed: int,
) -> str:  # fmt: skip
    event_id = row["id"]
    q = query(where)
    hidden = f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
    hidden += f'<input type="hidden" name="back" value="{escape(q)}">'
    status = '<p id="verdict">Not reviewed yet.</p>'
    reopen = ""
    if row["verdict"]:
        status = (
            f'<p id="verdict" class="{escape(row["verdict"])}">Verdict: '
            f"<b>{escape(VERDICT_NAMES[row['verdict']])}</b> by {escape(row['reviewer'])} "
            f"at {escape(row['at'])}</p>"
        )
        reopen = (
            f'<form method="post" action="/event/{escape(event_id)}/reopen">{hidden}'
            '<button id="reopen">Re-open (r)</button></form>'
        )
    buttons = "".join(
        f'<button name="verdict" value="{v}" class="{v}">{escape(name)} ({key})</button>'
        for v, name, key in (
            ("upcall", "Up-call", "u"),
            ("not", "Not an up-call", "n"),
            ("unsure", "Unsure", "s"),
        )
    )
    if has_clip:
        options = "".join(
            f'<option value="{s}"{" selected" if s == speed else ""}>{s}x'
            f"{' (pitch x4: audible)' if s == 4 else ''}</option>"
            for s in SPEEDS
        )
        media = (
            f'<img class="spectrogram" id="spectrogram" src="/event/{escape(event_id)}/'
            'spectrogram.png" alt="spectrogram of the clip: frequency against time, the '
            'detection bracketed">'
            f'<audio id="player" controls preload="auto" data-speed="{speed}" '
            f'data-base="/event/{escape(event_id)}/audio.wav" '
            f'src="/event/{escape(event_id)}/audio.wav?speed={speed}"></audio> '
            f'<label>speed <select id="speed">{options}</select></label>'
        )
    else:
        media = '<p id="no-clip">No clip for this detection in the clips folder.</p>'
    lines = "".join(
        f"<tr><td>{escape(h['at'])}</td><td>{escape(h['action'])}</td>"
        f"<td>{escape(VERDICT_NAMES.get(h['verdict'] or '', ''))}</td>"
        f"<td>{escape(h['reviewer'])}</td></tr>"
        for h in history
    )
    model = record.get("model") or {}
    facts = (
        f"<tr><th>station</th><td>{escape(row['station'])}</td></tr>"
        f"<tr><th>start (UTC)</th><td>{escape(row['start'])}</td></tr>"
        f"<tr><th>length</th><td>{duration_s(row):.2f} s</td></tr>"
        f"<tr><th>score</th><td>{row['score']:.4f} (threshold "
        f"{escape(str(record.get('threshold', '?')))})</td></tr>"
        f"<tr><th>model</th><td>{escape(str(model.get('name', '?')))}</td></tr>"
        f"<tr><th>source</th><td>{escape(str(record.get('source', '?')))}</td></tr>"
        f"<tr><th>event id</th><td>{escape(event_id)}</td></tr>"
    )

    def link(target: str | None, anchor: str, label: str) -> str:
        if target is None:
            return f'<a id="{anchor}">{label}</a>'
        return f'<a id="{anchor}" href="/event/{escape(target)}?{escape(q)}">{label}</a>'

    body = (
        f"<h1>Detection at {escape(row['start'])}</h1>"
        f"<p>{link(prev_id, 'prev', '&larr; newer (k)')} | "
        f'<a id="queue" href="/queue?{escape(q)}">queue (q)</a> | '
        f"{link(next_id, 'next', 'older (j) &rarr;')}</p>"
        f"{status}{media}"
        f'<form method="post" action="/event/{escape(event_id)}/verdict" class="verdicts">'
        f"{hidden}{buttons}</form>{reopen}"
        f"<table>{facts}</table>"
        + (f"<h2>History</h2><table id='history'>{lines}</table>" if lines else "")
        + '<p class="keys">Keys: u up-call, n not, s unsure (then the next one), j / k older / '
        "newer, p or space play, 1 / 2 / 4 speed, r re-open, q queue.</p>"
    )
    return page(f"Detection {row['start']}", body, user, csrf)


def _num(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def stations_page(rows: list, user: str, csrf: str) -> str:
    lines = "".join(
        f'<tr><td><a href="/queue?{query(QueueFilter(station=r["station"]))}">'
        f"{escape(r['station'])}</a></td>"
        f"<td>{escape(r['last_seen'] or 'no status yet')}</td>"
        f"<td>{escape(r['source_state'] or '-')}</td>"
        f"<td>{_num(r['lag_s'], '.2f', ' s')}</td>"
        f"<td>{_num(r['silent_s'], '.1f', ' s')}</td>"
        f"<td>{_num(r['dropped_samples'], 'd')}</td>"
        f"<td>{_num(r['last_seq'], 'd')}</td>"
        f"<td>{r['events']}</td><td>{r['unreviewed']}</td>"
        f"<td>{escape(r['last_event'] or '-')}</td>"
        f"<td>{escape(r['endpoint'] or '-')}</td></tr>"
        for r in rows
    )
    body = (
        "<h1>Stations</h1><p>Health from each station's last status message.</p>"
        '<table id="stations"><tr><th>station</th><th>last seen (UTC)</th><th>source</th>'
        "<th>lag</th><th>silence</th><th>dropped samples</th><th>last seq</th><th>events</th>"
        "<th>unreviewed</th><th>last event</th><th>endpoint</th></tr>"
        f"{lines}</table>"
    )
    return page("Stations", body, user, csrf)


def error_page(status: int, message: str, user: str | None = None, csrf: str = "") -> str:
    return page(str(status), f'<h1>{status}</h1><p class="error">{escape(message)}</p>', user, csrf)
