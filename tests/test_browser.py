"""The explorer in a real browser: JupyterLab on a free local port, headless Chromium driven by
selenium, a notebook that builds the explorer over a smoke model, a query typed and sent with Enter.

Needs Debian's ``chromium`` + ``chromium-driver`` and ``pip install selenium`` (``.[browser]``);
skipped, saying which is missing, without them."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
DRIVER = shutil.which("chromedriver")
QUERY = "a man in a red jacket and black shorts"

NOTEBOOK = {
    "cells": [{"cell_type": "code", "execution_count": None, "id": "explorer", "metadata": {}, "outputs": [],
               "source": ["from tbpr.explorer import Explorer\n",
                          "explorer = Explorer.from_runs('smoke', ['ssan'], train=True, progress=False)\n",
                          "explorer.widget()"]}],
    "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def _missing() -> str | None:
    if CHROMIUM is None or DRIVER is None:
        return "needs chromium and chromedriver: apt-get install -y chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "needs selenium: pip install -e .[browser]"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, smoke_root):
    """A JupyterLab server over a folder holding the explorer notebook; stopped with its kernels."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from tbpr import experiments
    experiments.run("ssan", "smoke", data_root=smoke_root, progress=False)  # cached: the kernel reuses it
    (tmp_path / "explore.ipynb").write_text(json.dumps(NOTEBOOK))
    port = _free_port()
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--ServerApp.token=", "--ServerApp.password=",
         f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MPLBACKEND": "Agg"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text()[-2000:])
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def browser():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1800"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, what, timeout: float = 60):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: what(d))
    except TimeoutException:
        debug = os.environ.get("TBPR_BROWSER_DEBUG")  # a folder for the page as it was
        if debug:
            driver.save_screenshot(f"{debug}/timeout.png")
            Path(f"{debug}/timeout.html").write_text(driver.page_source)
        raise


def test_explorer_answers_a_typed_query_in_jupyterlab(lab, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    start = time.perf_counter()
    browser.get(f"{lab}/lab/tree/explore.ipynb")
    _wait(browser, lambda d: "| Idle" in d.find_element(By.CSS_SELECTOR, ".jp-StatusBar-Widget").text)  # kernel up
    browser.find_element(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell").click()
    browser.find_element(By.CSS_SELECTOR, '[data-command="notebook:run-cell-and-select-next"]').click()
    query = _wait(browser, lambda d: d.find_element(  # the query box, not the images box above it
        By.CSS_SELECTOR, ".jp-OutputArea-output .widget-text input[placeholder^='describe a person']"), 90)
    image = _wait(browser, lambda d: next(
        (i for i in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img") if i.get_attribute("src")), None), 30)
    info = browser.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output .widget-html")
    first_src, first_info = image.get_attribute("src"), info.text
    assert "answered in" in first_info
    print(f"notebook opened, explorer built and first answer drawn: {time.perf_counter() - start:.1f} s")

    query.click()
    query.send_keys(Keys.CONTROL, "a")
    query.send_keys(Keys.BACKSPACE)
    query.send_keys(QUERY)  # keystrokes alone re-rank nothing
    time.sleep(0.5)
    assert image.get_attribute("src") == first_src and info.text == first_info
    sent = time.perf_counter()
    query.send_keys(Keys.ENTER)
    _wait(browser, lambda d: image.get_attribute("src") != first_src and info.text != first_info, 10)
    round_trip = time.perf_counter() - sent
    answered = float(re.search(r"answered in ([0-9.]+) s", info.text).group(1))
    print(f"Enter -> new results image in the browser: {round_trip:.2f} s (kernel: {answered:.2f} s)")
    assert answered <= 2.0 and round_trip <= 5.0
    browser.save_screenshot(str(tmp_path / "explorer.png"))
    if os.environ.get("TBPR_SCREENSHOT"):  # how the README's screenshot was taken
        shutil.copy(tmp_path / "explorer.png", Path(os.environ["TBPR_SCREENSHOT"]))
