"""The page of `gen-linker serve` in a real headless browser: Debian's chromium driven through
chromium-driver by selenium, against a real uvicorn server on 127.0.0.1. The test types a
text, selects a span or asks for detection, clicks, and reads the entity, its description and
the candidates the page shows. It skips, saying why, where chromium is not installed
(`bash install.sh --test` installs it with apt-get)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")

from gen_linker import load_linker  # noqa: E402
from gen_linker.server.app import create_app  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Debian's chromium and chromium-driver are not installed (bash install.sh --test installs them with "
           "apt-get; Playwright's own browser download cannot work offline)")


@contextlib.contextmanager
def live(app):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")          # never let Selenium Manager look for downloads
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--window-size=1100,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, cond, timeout: float = 20.0, what: str = "the page"):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: cond(d), message=f"waiting for {what}")


def test_the_page_links_a_selection_and_detected_mentions(browser, kb):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    linker = load_linker(kb, {"linker": "bm25"})
    with live(create_app(linker, kb, max_wait_ms=1)) as base:
        browser.get(base + "/")
        find = lambda css: browser.find_element(By.CSS_SELECTOR, css)  # noqa: E731
        wait_for(browser, lambda d: find("#ready").text == "ready", what="the ready badge")
        assert f"({len(kb)} entities)" in find("#kb-info").text

        # detect mentions and link them
        text = find("#text")
        text.clear()
        sentence = "Oscar Robertson played for the Milwaukee Bucks in Paris"
        text.send_keys(sentence)
        find("#detect").click()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#highlighted mark")) == 3, what="3 marks")
        marks = browser.find_elements(By.CSS_SELECTOR, "#highlighted mark")
        assert [m.find_element(By.TAG_NAME, "sub").text for m in marks] == ["Oscar Robertson", "Milwaukee Bucks",
                                                                             "Paris"]
        assert find("#entity-name").text == "Oscar Robertson" and find("#entity-id").text == "Q3"
        wait_for(browser, lambda d: find("#entity-description").text == "(no description in the KB)",
                 what="the description")

        # click a mention: its entity, description and candidates with scores
        marks[2].click()
        expected = linker.process_text(sentence, "Paris", 50, 55)
        wait_for(browser, lambda d: find("#entity-mention").text == "Paris", what="the Paris details")
        assert find("#entity-id").text == expected.entity_id
        wait_for(browser, lambda d: find("#entity-description").text == kb.get(expected.entity_id).description,
                 what="Paris's description")
        rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        assert [(c[2], float(c[3])) for c in cells] == [(c.entity_id, pytest.approx(c.score, abs=1e-3))
                                                        for c in expected.candidates]

        # select a span with the keyboard and link it, with an error first
        text.clear()
        text.send_keys("Griezmann playing away to Salamanca")
        text.click()
        text.send_keys(Keys.HOME)
        find("#link-selection").click()
        wait_for(browser, lambda d: find("#error").is_displayed(), what="the no-selection error")
        assert "select a mention" in find("#error").text
        text.send_keys(Keys.HOME)                            # focus the text again, caret at its start
        ActionChains(browser).key_down(Keys.SHIFT).send_keys(Keys.ARROW_RIGHT * len("Griezmann")) \
            .key_up(Keys.SHIFT).perform()
        wait_for(browser, lambda d: "Griezmann" in find("#selection").text, what="the selection")
        find("#link-selection").click()
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#highlighted mark")) == 1
                 and find("#entity-mention").text == "Griezmann", what="the linked selection")
        assert find("#entity-name").text == "Antoine Griezmann" and not find("#error").is_displayed()
        assert find("#highlighted").text.startswith("Griezmann")
