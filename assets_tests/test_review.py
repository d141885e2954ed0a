"""Human review: corrections, the queue, and the /review page driven in headless Chromium."""

import http.server
import shutil
import threading
import time
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn

from autosink_platform.definitions import defs
from autosink_platform.defs.runner import QUIET, register_sessions
from autosink_platform.fleet.api import create_app
from autosink_platform.fleet.devices import ReviewerRegistry
from autosink_platform.home import Home
from autosink_platform.labeling.review import Correction, ReviewLog, apply_reviews, review_queue
from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.sink import SINK

from .conftest import platform_resources

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def test_latest_correction_wins_and_history_is_kept(tmp_path):
    log = ReviewLog(tmp_path)
    labels = pd.DataFrame(
        {
            "frame_index": [0, 1, 2],
            "label": pd.array([0, pd.NA, 1], dtype="Int8"),
            "label_source": pd.array(["implicit", None, "override"], dtype="string"),
            "confidence": [0.6, 0.0, 0.9],
        }
    )
    log.append(Correction("s", 1, 1, "ana", None, None, at="2026-11-24T10:00:00+00:00"))
    log.append(Correction("s", 1, 0, "ben", 1, "review", at="2026-11-24T11:00:00+00:00"))
    log.append(Correction("s", 2, 0, "ana", 1, "override", at="2026-11-24T10:30:00+00:00"))
    out = apply_reviews(labels, log.for_session("s"))
    assert out["label"].tolist() == [0, 0, 0]
    assert out["label_source"].tolist() == ["implicit", "review", "review"]
    assert out["confidence"].tolist() == [0.6, 1.0, 1.0]
    assert [c.reviewer for c in log.for_session("s")] == ["ana", "ben", "ana"]  # appended, never overwritten
    with pytest.raises(ValueError, match="reviewer"):
        log.append(Correction("s", 0, 1, " ", 0, "implicit"))
    with pytest.raises(ValueError, match="no such frame"):
        apply_reviews(labels, [Correction("s", 9, 1, "ana", None, None)])


def test_queue_ranks_contradicted_weak_labels_first_and_skips_reviewed():
    table = pd.DataFrame(
        {
            "session_id": ["s"] * 4,
            "device_id": ["d"] * 4,
            "frame_index": [0, 1, 2, 3],
            "frame_path": ["p"] * 4,
            "label": pd.array([1, 1, 0, pd.NA], dtype="Int8"),
            "label_source": pd.array(["override", "implicit", "implicit", None], dtype="string"),
            "confidence": [1.0, 0.6, 0.6, 0.0],
        }
    )
    champion = np.array([0.1, 0.1, 0.05, 0.5])
    queue = review_queue(table, champion, reviewed=set())
    order = queue["frame_index"].tolist()
    assert order[0] == 1 and queue.iloc[0]["reason"] == "champion disagrees"  # contradicted weak label first
    assert order.index(0) < order.index(2) and order.index(3) < order.index(2)  # agreeing labels last
    assert queue.iloc[0]["value"] == pytest.approx(0.9 * (1 - 0.6 / 2))
    assert 1 not in review_queue(table, champion, reviewed={("s", 1)})["frame_index"].tolist()


@pytest.fixture
def labeled_home(tmp_path, tiny_lake, monkeypatch):
    """A home whose sessions are ingested and labeled through Dagster, with a review queue."""
    home = Home(tmp_path / "home")
    home.root.mkdir()
    shutil.move(str(tiny_lake), home.lake)
    monkeypatch.setenv("AUTOSINK_HOME", str(home.root))
    (tmp_path / "dagster").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dagster")) as instance:
        lake = Lake(home.lake)
        register_sessions(instance, SINK, lake)
        ingest = defs.resolve_job_def("sink_ingest")
        for sid in lake.committed_sessions():
            ingest.execute_in_process(instance=instance, partition_key=sid, run_config=QUIET)
        store = FeatureStore(home.store, "sink")
        table = store.get_labels(store.labeled_sessions())
        # An uninformed champion (p = 0.5 everywhere) still gives a well-defined ranking.
        queue = review_queue(table, np.full(len(table), 0.5), reviewed=set())
        queue.to_parquet(store.root / "review_queue.parquet", index=False)
        yield home, instance, store


@pytest.fixture
def served(labeled_home):
    home, instance, store = labeled_home
    srv = uvicorn.Server(uvicorn.Config(create_app(home), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield f"http://127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}", home, instance, store
    srv.should_exit = True
    thread.join(timeout=10)


def _sign_in(browser, url: str, token: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{url}/review")
    assert browser.current_url.endswith("/review/login")  # nothing is shown before signing in
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in").click()
    # The form's POST and its redirect finish after click() returns: wait for the page, not a moment.
    WebDriverWait(browser, 20).until(lambda d: d.current_url.endswith("/review"))


def test_reviewer_corrects_a_label_in_the_browser(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.expected_conditions import staleness_of
    from selenium.webdriver.support.ui import WebDriverWait

    url, home, instance, store = served
    _sign_in(browser, url, ReviewerRegistry(home.reviewers_db).add("ana"))
    session_id = browser.find_element(By.ID, "session").text
    frame_index = int(browser.find_element(By.ID, "frame-index").text)
    shown = browser.find_element(By.ID, "current-label").text
    frame = browser.find_element(By.CSS_SELECTOR, "img.frame")
    assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", frame) == 64
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "review_page.png"))

    others_before = {
        s: (store.root / "labeled_frames" / f"{s}.parquet").stat().st_mtime_ns
        for s in store.labeled_sessions()
        if s != session_id
    }
    new_label = 0 if shown == "open" else 1
    old_page = browser.find_element(By.ID, "session")
    browser.find_element(By.ID, "label-closed" if new_label == 0 else "label-open").click()
    WebDriverWait(browser, 20).until(staleness_of(old_page))  # the POST, its redirect and the next page

    # The page moves on to the next frame; the correction records the signed-in reviewer.
    assert (browser.find_element(By.ID, "session").text, int(browser.find_element(By.ID, "frame-index").text)) != (
        session_id,
        frame_index,
    )
    assert browser.find_element(By.ID, "reviewer").text == "ana"
    (correction,) = ReviewLog(store.root).for_session(session_id)
    assert (correction.frame_index, correction.label, correction.reviewer) == (frame_index, new_label, "ana")
    assert {"open": 1, "closed": 0, "unlabeled": None}[shown] == correction.old_label

    # The review sensor re-labels exactly the corrected session ...
    sensor = defs.resolve_sensor_def("sink_reviews")
    result = sensor(dg.build_sensor_context(instance=instance, resources={"store": platform_resources()["store"]}))
    assert [r.partition_key for r in result.run_requests] == [session_id]
    assert (
        defs.resolve_job_def("sink_relabel")
        .execute_in_process(instance=instance, partition_key=session_id, run_config=QUIET)
        .success
    )
    # ... and the labeled store changes for that frame only, with the review's provenance.
    labels = store.get_labels([session_id]).set_index("frame_index")
    assert (
        labels.loc[frame_index, "label"],
        labels.loc[frame_index, "label_source"],
        labels.loc[frame_index, "confidence"],
    ) == (new_label, "review", 1.0)
    assert {
        s: (store.root / "labeled_frames" / f"{s}.parquet").stat().st_mtime_ns for s in others_before
    } == others_before
    again = sensor(
        dg.build_sensor_context(
            instance=instance, cursor=result.cursor, resources={"store": platform_resources()["store"]}
        )
    )
    assert again.run_requests == []


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    """Another origin's page that posts a correction to the review page as soon as it loads."""

    target = ""

    def do_GET(self):
        body = f"""<!doctype html><html><body onload="document.forms[0].submit()">
<form method="post" action="{self.target}/review">
<input name="session_id" value="{self.server.session_id}"><input name="frame_index" value="{self.server.frame_index}">
<input name="label" value="1"><input name="csrf" value="guessed"></form></body></html>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_review_refuses_unauthenticated_and_cross_site_corrections(served, browser):
    """Nobody corrects a label without signing in, and a page on another origin cannot post a
    correction with a signed-in reviewer's browser; a revoked reviewer's session ends."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, home, instance, store = served
    session_id, frame_index = store.labeled_sessions()[0], 3
    form = {"session_id": session_id, "frame_index": frame_index, "label": 1, "csrf": "x"}
    anonymous = httpx.post(f"{url}/review", data=form)
    assert anonymous.status_code == 401 and "sign in" in anonymous.text
    assert httpx.get(f"{url}/review/frames/{session_id}/0.png").status_code == 401
    assert httpx.post(f"{url}/review/login", data={"token": "guess"}).status_code == 401

    registry = ReviewerRegistry(home.reviewers_db)
    token = registry.add("ben")
    assert token.encode() not in home.reviewers_db.read_bytes()  # stored hashed only
    _sign_in(browser, url, token)
    cookie = browser.get_cookie("autosink_review")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/review"

    attacker = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AttackerPage)
    attacker.session_id, attacker.frame_index = session_id, frame_index
    _AttackerPage.target = url
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{attacker.server_address[1]}/")
        WebDriverWait(browser, 20).until(lambda b: b.current_url.startswith(f"{url}/review"))
        assert "refused" in browser.page_source or "CSRF" in browser.page_source, browser.page_source[:500]
    finally:
        attacker.shutdown()
    assert ReviewLog(store.root).for_session(session_id) == []  # nothing recorded

    # With the page's own CSRF token but another Origin: refused as well.
    browser.get(f"{url}/review")
    csrf = browser.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    cookies = {"autosink_review": cookie["value"]}
    forged = httpx.post(
        f"{url}/review", data=form | {"csrf": csrf}, cookies=cookies, headers={"Origin": "http://evil.example"}
    )
    assert forged.status_code == 403 and "cross-site" in forged.text
    ok = httpx.post(f"{url}/review", data=form | {"csrf": csrf}, cookies=cookies, headers={"Origin": url})
    assert ok.status_code == 303
    (correction,) = ReviewLog(store.root).for_session(session_id)
    assert correction.reviewer == "ben"  # the signed-in reviewer, whatever a form says

    registry.revoke("ben")
    browser.get(f"{url}/review")
    assert browser.current_url.endswith("/review/login")  # the session ended with the token
