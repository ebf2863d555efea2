"""Compact events: the layouts the README documents, the sizes Iridium allows, `decode`."""

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from detector import cli, compact
from detector.compact import (
    EVENT_SIZE,
    HEADER_SIZE,
    MAX_EVENTS,
    MAX_MESSAGE,
    STATUS_SIZE,
    decode_message,
    encode_event,
    pack_message,
)
from detector.records import encode
from tests.test_sbd import RUN, SHA, assert_same, events

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "### Satellite link: compact events over Iridium SBD"
PACKED_AT = datetime(2026, 12, 1, 23, 59, 59, 999000, tzinfo=UTC)


def readme_tables() -> list[list[tuple[int, int, str, str]]]:
    """The section's byte-layout tables: (offset, bytes, field, meaning) rows, in order."""
    text = README.read_text()
    section = text[text.index(SECTION) :].split("\n### ")[0]
    tables = []
    for block in section.split("| offset | bytes | field | meaning |")[1:]:
        rows = []
        for line in block.splitlines()[2:]:
            match = re.match(r"^\| (\d+) \| (\d+) \| `(\w+)` \| (.*) \|$", line)
            if not match:
                break
            rows.append((int(match[1]), int(match[2]), match[3], match[4]))
        tables.append(rows)
    return tables


def layout_rows(layout: tuple[compact.Field, ...], at: int) -> list[tuple[int, int, str, str]]:
    rows = []
    for field in layout:
        rows.append((at, field.size, field.name, field.meaning))
        at += field.size
    return rows


def test_the_readme_tables_are_the_layouts_in_the_code():
    header, status, event = readme_tables()
    assert header == layout_rows(compact.HEADER, 0)
    assert status == layout_rows(compact.STATUS, HEADER_SIZE)  # offsets in the message
    assert event == layout_rows(compact.EVENT, 0)
    section = " ".join(README.read_text().split(SECTION)[1].split())  # lines joined
    assert f"{EVENT_SIZE}-byte record" in section and f"{STATUS_SIZE}-byte status" in section
    assert f"{HEADER_SIZE + STATUS_SIZE} + {EVENT_SIZE}k" in section
    assert f"at {HEADER_SIZE} + {EVENT_SIZE}k without a summary" in section
    assert f"summary alone ({HEADER_SIZE + STATUS_SIZE} bytes)" in section


def test_an_event_fits_50_bytes_and_ten_with_a_summary_fit_one_message():
    assert EVENT_SIZE <= 50 and MAX_EVENTS == 10
    status = {"last_seq": 2**40, "level_dbfs": -300.0, "lag_s": 1e9, "source_state": "down"}
    records = [encode_event(e, 65535) for e in events(1, MAX_EVENTS)]
    message = pack_message(records, 65535, PACKED_AT, status, {"failed_sessions": 10**9})
    assert len(message) <= MAX_MESSAGE
    summary, *back = decode_message(message)
    assert summary["source_state"] == "down" and summary["time"] == "2026-12-01T23:59:59.999Z"
    # counters saturate at their field's maximum instead of failing the message
    assert summary["last_seq"] == 2**32 - 1 and summary["failed_sessions"] == 2**16 - 1
    assert summary["level_dbfs"] == -127 and summary["lag_s"] == 6553.5
    assert_same(events(1, MAX_EVENTS), back, station=65535)
    with pytest.raises(ValueError, match="at most 10"):
        pack_message(records + records[:1], 1, PACKED_AT)


def test_json_is_many_times_the_compact_record():
    event = events(1, 1)[0]
    assert len(encode(event)) > 10 * EVENT_SIZE


def test_a_flag_for_the_gap_and_the_clip_and_none_for_silence():
    event = {**events(5, 1)[0], "clip": "/clips/x.flac"}
    assert "gap_before_s" in event
    (back,) = decode_message(pack_message([encode_event(event, 1)], 1, PACKED_AT))
    assert back["gap_before"] is True and back["clip"] is True
    message = pack_message([], 1, PACKED_AT, {"level_dbfs": None}, {})
    assert decode_message(message)[0]["level_dbfs"] is None


def test_run_and_model_ids_that_are_not_hex_still_get_a_prefix():
    event = {**events(1, 1)[0], "run": "run-1", "model": {"sha256": "0"}}
    (back,) = decode_message(pack_message([encode_event(event, 1)], 1, PACKED_AT))
    assert len(back["run_prefix"]) == 8 and len(back["model_sha256_prefix"]) == 8
    assert back["run_prefix"] != RUN[:8] and SHA


@pytest.mark.parametrize(
    "data, why",
    [
        (b"X\x01" + bytes(20), "no W header"),
        (b"W\x02" + bytes(10), "version 2"),
        (pack_message([], 1, PACKED_AT) + b"\x00", "header says 12"),
        (b"W\x01" + bytes(8) + b"\x01\x0b", "more than a message holds"),
    ],
)
def test_what_is_not_a_whole_known_message_is_refused(data, why):
    with pytest.raises(ValueError, match=why):
        decode_message(data)


# -- whale-listen decode ---------------------------------------------------------------------------
def two_messages() -> list[bytes]:
    status = {"last_seq": 12, "source_state": "up", "level_dbfs": -40.0}
    first = pack_message([encode_event(e, 9) for e in events(1, 10)], 9, PACKED_AT, status, {})
    second = pack_message([encode_event(e, 9) for e in events(11, 2)], 9, PACKED_AT)
    return [first, second]


def decode(*args: str, stdin: bytes | None = None):
    return CliRunner().invoke(cli.main, ["decode", *args], input=stdin)


def printed(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_decode_reads_binary_back_to_back_and_hex_a_line_each(tmp_path):
    first, second = two_messages()
    (tmp_path / "m.sbd").write_bytes(first + second)
    binary = decode(str(tmp_path / "m.sbd"))
    assert binary.exit_code == 0, binary.stderr
    items = printed(binary)
    assert [i["type"] for i in items] == ["sbd_status"] + ["upcall"] * 12
    assert_same(events(1, 12), items[1:], station=9)
    assert items[0]["last_seq"] == 12 and items[0]["station_id"] == 9
    hex_text = f"{first.hex()}\n\n{second.hex().upper()}\n".encode()
    from_stdin = decode("-", stdin=hex_text)
    assert from_stdin.exit_code == 0 and printed(from_stdin) == items


def test_decode_says_which_message_is_bad_prints_the_rest_and_exits_2(tmp_path):
    first, second = two_messages()
    lines = f"{first.hex()}\nzz\n{second.hex()[:-2]}\n{second.hex()}\n"
    (tmp_path / "hook.txt").write_text(lines)
    result = decode(str(tmp_path / "hook.txt"))
    assert result.exit_code == 2
    assert [i["seq"] for i in printed(result) if i["type"] == "upcall"] == list(range(1, 13))
    assert "line 2: not hex" in result.stderr
    assert "line 3: message of 69 bytes, its header says 70" in result.stderr
    assert result.stderr.strip().endswith("2 message(s) could not be decoded")
    missing = decode(str(tmp_path / "nope\nfile.sbd"))
    assert missing.exit_code == 2 and missing.stderr.count("\n") == 1
    assert "cannot read" in missing.stderr and "nope\\x0afile.sbd" in missing.stderr


def test_decode_is_a_whale_listen_command():
    ran = subprocess.run(
        [sys.executable, "-c", "from detector.cli import main; main(prog_name='whale-listen')",
         "decode", "-h"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ran.returncode == 0 and "FILE|-" in ran.stdout
