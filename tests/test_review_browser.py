"""The review page in a real browser: headless Chromium driven by selenium against the real
`whale-listen review` server (a subprocess on a free 127.0.0.1 port) over a shore database
filled from real replays. An analyst logs in, opens the queue, plays a clip, marks three
detections with the keyboard and re-opens one; the SQLite file and the exported table must say
so. Screenshots of the queue and of a detection page go to tmp (docs/ when
REVIEW_SCREENSHOTS=docs: that is how the README's pictures are made)."""

import csv
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from detector import shoredb
from detector.shoredb import now
from tests.review_data import make_shore
from tests.test_mqtt import free_port

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "from detector.cli import main; main(prog_name='whale-listen')"]
PASSWORD = "correct horse battery"

pytestmark = pytest.mark.skipif(
    not (CHROMEDRIVER.exists() and CHROMIUM),
    reason="needs Chromium and /usr/bin/chromedriver (apt-get install chromium chromium-driver)",
)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO)}


@pytest.fixture
def server(tmp_path, shipped_model):
    shore = make_shore(tmp_path / "shore", shipped_model)
    added = subprocess.run(
        [*CLI, "review", "--db", shore.db, "--add-user", "ann"],
        input=PASSWORD + "\n", capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "review", "--db", shore.db, "--clips", shore.clips, "--listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    for line in proc.stderr:  # the server says where it listens once it does
        if "review page at" in line:
            break
    else:
        pytest.fail(f"the review server exited ({proc.wait()}) before listening")
    try:
        yield f"http://127.0.0.1:{port}", shore
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0  # SIGTERM is a clean stop


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--autoplay-policy=no-user-gesture-required",
                "--window-size=1000,900"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what: str, timeout: float = 30.0):
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    navigating = (NoSuchElementException, StaleElementReferenceException)  # a page mid-load
    wait = WebDriverWait(driver, timeout, ignored_exceptions=navigating)
    return wait.until(condition, message=f"waiting for {what}")


def _press(driver, key: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def _event_id(url: str) -> str:
    return url.split("/event/")[1].split("?")[0]


def _screenshot(driver, name: str, tmp_path: Path) -> Path:
    folder = REPO / "docs" if os.environ.get("REVIEW_SCREENSHOTS") == "docs" else tmp_path
    folder.mkdir(exist_ok=True)
    path = folder / name
    assert driver.save_screenshot(str(path))
    return path


def test_an_analyst_reviews_three_detections_with_the_keyboard(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, shore = server
    started = now()
    browser.get(f"{base}/queue")
    assert "/login" in browser.current_url  # nothing without a session
    browser.find_element(By.ID, "user").send_keys("ann")
    browser.find_element(By.ID, "password").send_keys(PASSWORD + Keys.ENTER)
    _wait(browser, lambda d: d.find_elements(By.ID, "queue"), "the queue")
    rows = browser.find_elements(By.CSS_SELECTOR, "#queue tr[data-href]")
    assert len(rows) == len(shore.events)
    newest = max(shore.events, key=lambda e: (e["start"], e["id"]))
    assert newest["id"] in rows[0].get_attribute("data-href")  # newest first
    _screenshot(browser, "review-queue.png", tmp_path)

    def selected() -> int:
        return browser.execute_script(
            "return Array.from(document.querySelectorAll('#queue tr[data-href]'))"
            ".findIndex(r => r.classList.contains('selected'))"
        )

    assert selected() == 0
    _press(browser, "jjk")  # down, down, up
    assert selected() == 1
    _press(browser, "k")
    assert selected() == 0
    _press(browser, Keys.ENTER)  # opens the selected (first) row
    _wait(browser, lambda d: d.find_elements(By.ID, "player"), "a detection page")
    assert _event_id(browser.current_url) == newest["id"]
    loaded = "return document.getElementById('spectrogram').naturalWidth"
    _wait(browser, lambda d: d.execute_script(loaded), "the spectrogram")
    _press(browser, "p")  # play
    state = _wait(browser, lambda d: d.execute_script(
        "const p = document.getElementById('player');"
        "return p.error ? 'error ' + p.error.code : (p.currentTime > 0 ? 'playing' : null)"),
        "the clip to play")  # fmt: skip
    assert state == "playing"
    duration = browser.execute_script("return document.getElementById('player').duration")
    assert 0 < duration < 10  # the 4x playback of a clip of a few seconds
    _press(browser, "p")  # pause again, for a still picture
    _screenshot(browser, "review-detection.png", tmp_path)

    marked = []
    for key in ("u", "n", "s"):
        here = _event_id(browser.current_url)
        marked.append(here)
        _press(browser, key)
        _wait(browser, lambda d, here=here: "/event/" in d.current_url
              and _event_id(d.current_url) != here, f"the page after {key}")  # fmt: skip
    assert len(set(marked)) == 3

    conn = shoredb.connect(shore.db)
    got = {
        r["event_id"]: (r["verdict"], r["reviewer"], r["at"])
        for r in conn.execute("SELECT * FROM verdicts")
    }
    assert {k: v[:2] for k, v in got.items()} == {
        marked[0]: ("upcall", "ann"), marked[1]: ("not", "ann"), marked[2]: ("unsure", "ann"),
    }  # fmt: skip
    assert all(started <= at <= now() for _, _, at in got.values())
    conn.close()

    # a reviewed detection can be re-opened: back into the queue, its history kept
    browser.get(f"{base}/event/{marked[0]}")
    assert "up-call" in browser.find_element(By.ID, "verdict").text
    _press(browser, "r")
    _wait(browser, lambda d: "Not reviewed" in d.find_element(By.ID, "verdict").text, "re-open")
    history = browser.find_element(By.ID, "history").text
    assert "verdict" in history and "reopen" in history

    browser.get(f"{base}/stations")
    health = browser.find_element(By.ID, "stations").text
    assert "buoy-a" in health and "buoy-b" in health and "0.25 s" in health

    labels = tmp_path / "labels.csv"
    exported = subprocess.run(
        [*CLI, "review", "--db", shore.db, "--clips", shore.clips, "--export", labels],
        capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    with labels.open() as handle:
        table = {row["event_id"]: row for row in csv.DictReader(handle)}
    assert {k: (v["label"], v["reviewer"]) for k, v in table.items()} == {
        marked[1]: ("not-upcall", "ann"), marked[2]: ("unsure", "ann"),
    }  # fmt: skip
    for row in table.values():
        assert (labels.parent / row["filename"]).is_file()
    assert time.strptime(table[marked[1]]["reviewed_at"][:19], "%Y-%m-%dT%H:%M:%S")
