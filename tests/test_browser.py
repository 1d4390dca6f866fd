"""The whole system in a real headless Chromium: SSO across subdomains, tasks, logout.

bin/popug runs as a subprocess (as a user starts it) on this test's database.
Chromium resolves *.localhost to loopback by itself, so the real host names work.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import bcrypt
import psycopg2
import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None
)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="Chromium and chromedriver are not installed (Debian: apt-get install chromium "
    "chromium-driver); .ci/run installs them",
)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_user(dsn, username, role, password):
    pw_hash = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email)"
            " VALUES (%s, %s, %s, %s) RETURNING id",
            (username, pw_hash, role, f"{username}@popug.test"),
        )
        return cur.fetchone()[0]


@pytest.fixture
def live_system(db_dsn, tmp_path):
    """bin/popug --service=all on a free port; yields the base URL pieces."""
    port = free_port()
    env = dict(
        os.environ,
        POPUG_DATABASE__DSN=db_dsn,
        POPUG_DATA_DIR=str(tmp_path / "var"),
        POPUG_AUTH__BCRYPT_COST="4",
    )
    log = open(tmp_path / "popug.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "popug"), "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    deadline = time.time() + 30
    while True:
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/healthz",
                headers={"Host": "tasktracker.uberpopug.localhost"},
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise AssertionError(
                "bin/popug did not start:\n" + (tmp_path / "popug.log").read_text()
            )
        time.sleep(0.2)
    yield port
    proc.terminate()
    assert proc.wait(timeout=20) == 0, (tmp_path / "popug.log").read_text()


@pytest.fixture
def chrome(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("NO_PROXY", "localhost,127.0.0.1")
    if "localhost" not in os.environ["NO_PROXY"]:
        os.environ["NO_PROXY"] += ",localhost,127.0.0.1"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def wait_url(driver, prefix, timeout=10):
    """Wait for a navigation started by a click: click() returns before it lands."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.current_url.startswith(prefix))
    return driver.current_url


def test_manager_logs_in_once_creates_shuffles_and_logs_out_everywhere(
    live_system, chrome, db_dsn, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port = live_system
    add_user(db_dsn, "mango", "manager", "mango-password")
    add_user(db_dsn, "kiwi", "worker", "kiwi-password")
    tracker = f"http://tasktracker.uberpopug.localhost:{port}"
    auth = f"http://auth.uberpopug.localhost:{port}"

    # The landing page links to the tracker; the tracker sends us to auth's login.
    chrome.get(f"http://uberpopug.localhost:{port}/")
    chrome.find_element(By.ID, "link-tracker").click()
    wait_url(chrome, f"{auth}/login?next=")
    chrome.find_element(By.ID, "username").send_keys("mango")
    chrome.find_element(By.ID, "password").send_keys("mango-password")
    chrome.find_element(By.ID, "login-submit").click()

    # Back on the tracker (a manager starts on all tasks), without a second login.
    assert wait_url(chrome, f"{tracker}/") == f"{tracker}/tasks"
    assert "mango" in chrome.find_element(By.CSS_SELECTOR, "[data-testid=current-user]").text

    chrome.find_element(By.ID, "nav-new").click()
    chrome.find_element(By.ID, "title").send_keys("Count the sunflower seeds")
    chrome.find_element(By.ID, "description").send_keys("All of them.\nTwice.")
    chrome.find_element(By.ID, "create-task").click()
    flash = chrome.find_element(By.CSS_SELECTOR, ".flash").text
    assert "Created task #" in flash and "kiwi" in flash
    row = chrome.find_element(By.CSS_SELECTOR, "#all-tasks tbody tr")
    assert "Count the sunflower seeds" in row.text and "kiwi" in row.text

    # Shuffle (confirm dialog accepted), then the flash reports it.
    chrome.find_element(By.ID, "shuffle").click()
    chrome.switch_to.alert.accept()
    WebDriverWait(chrome, 10).until(lambda d: "Shuffled" in d.page_source)
    assert (
        "Shuffled: 1 open task reassigned, 0 to a different popug"
        in chrome.find_element(By.CSS_SELECTOR, ".flash").text
    )

    # Auth knows us too: no login form there.
    chrome.get(f"{auth}/")
    assert "Hello, mango" in chrome.page_source
    chrome.save_screenshot(str(tmp_path / "auth-home.png"))

    # Log out from the tracker: logged out of auth and of the tracker.
    chrome.get(f"{tracker}/")
    chrome.find_element(By.ID, "logout").click()
    wait_url(chrome, f"{auth}/login")
    assert "You are logged out" in chrome.page_source
    chrome.get(f"{tracker}/tasks")
    assert chrome.current_url.startswith(f"{auth}/login?next=")
    assert chrome.find_element(By.ID, "username")


def test_worker_sees_only_own_tasks_and_completes_one(live_system, chrome, db_dsn):
    from selenium.webdriver.common.by import By

    port = live_system
    add_user(db_dsn, "kiwi", "worker", "kiwi-password")
    manager_id = add_user(db_dsn, "mango", "manager", "mango-password")
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT id FROM core.users WHERE username = 'kiwi'")
        kiwi = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO core.tasks (title, assignee_id, assign_fee, reward, created_by)"
            " VALUES ('Preen feathers', %s, 12.50, 30.00, %s) RETURNING id",
            (kiwi, manager_id),
        )
        task_id = cur.fetchone()[0]
    tracker = f"http://tasktracker.uberpopug.localhost:{port}"
    chrome.get(f"{tracker}/")
    chrome.find_element(By.ID, "username").send_keys("kiwi")
    chrome.find_element(By.ID, "password").send_keys("kiwi-password")
    chrome.find_element(By.ID, "login-submit").click()
    assert wait_url(chrome, f"{tracker}/") == f"{tracker}/"
    assert "Preen feathers" in chrome.find_element(By.ID, "my-tasks").text
    chrome.implicitly_wait(0)  # absence checks: do not wait for what should not come
    assert not chrome.find_elements(By.ID, "nav-new")
    assert not chrome.find_elements(By.ID, "shuffle")
    chrome.implicitly_wait(5)
    chrome.find_element(By.CSS_SELECTOR, f"button.complete[data-task='{task_id}']").click()
    assert "30.00 credited" in chrome.find_element(By.CSS_SELECTOR, ".flash").text
    assert chrome.find_element(By.ID, "no-tasks")
    chrome.get(f"{tracker}/tasks/new")
    assert "403" in chrome.find_element(By.TAG_NAME, "h1").text
