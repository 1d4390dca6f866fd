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
        POPUG_REPLICATION__INTERVAL_S="0.5",
        # Yesterday's seeded entries stay unpaid while a test looks at them.
        POPUG_ACCOUNTING__CLOSE_CHECK_S="3600",
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


def seed_account(dsn, worker_id, creator_id):
    """Yesterday: a task assigned and completed; today: one assigned. Returns titles."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.tasks (title, description, assignee_id, assign_fee, reward,"
            " created_by, status, created_at, assigned_at, completed_at) VALUES"
            " ('Count the seeds', 'twice', %s, 12.50, 30.00, %s, 'done',"
            "  now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'),"
            " ('Wash the perch', '', %s, 14.00, 25.00, %s, 'open', now(), now(), NULL)"
            " RETURNING id, assign_fee, reward, status, created_at",
            (worker_id, creator_id, worker_id, creator_id),
        )
        for task_id, fee, reward, status, at in cur.fetchall():
            cur.execute(
                "INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)"
                " VALUES (%s, %s, 'fee', %s, %s)",
                (worker_id, task_id, -fee, at),
            )
            if status == "done":
                cur.execute(
                    "INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)"
                    " VALUES (%s, %s, 'reward', %s, %s)",
                    (worker_id, task_id, reward, at),
                )


def wait_replicated(dsn, rows, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM accounting.ledger")
                if cur.fetchone()[0] >= rows:
                    return
        except psycopg2.Error:
            pass
        time.sleep(0.2)
    raise AssertionError("the accounting replica did not catch up")


def log_in(chrome, username, password):
    from selenium.webdriver.common.by import By

    chrome.find_element(By.ID, "username").send_keys(username)
    chrome.find_element(By.ID, "password").send_keys(password)
    chrome.find_element(By.ID, "login-submit").click()


def open_accounting(chrome, port, db_dsn, username, path):
    """kiwi (a worker with a seeded account) and mango (an accountant) exist, the
    replica has kiwi's entries; log in as `username` on accounting's `path`."""
    kiwi = add_user(db_dsn, "kiwi", "worker", "kiwi-password")
    mango = add_user(db_dsn, "mango", "accountant", "mango-password")
    seed_account(db_dsn, kiwi, mango)
    wait_replicated(db_dsn, 3)
    accounting = f"http://accounting.uberpopug.localhost:{port}"
    chrome.get(f"{accounting}{path}")
    log_in(chrome, username, f"{username}-password")
    assert wait_url(chrome, f"{accounting}{path}") == f"{accounting}{path}"
    return accounting, kiwi, mango


def test_worker_reads_own_account_day_by_day_and_no_other(live_system, chrome, db_dsn, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    accounting, kiwi, mango = open_accounting(chrome, live_system, db_dsn, "kiwi", "/")
    # 30.00 - 12.50 yesterday (not closed: nothing paid), - 14.00 today.
    assert chrome.find_element(By.ID, "balance").text == "3.50"
    assert chrome.find_element(By.ID, "opening").text == "17.50"
    today = chrome.find_element(By.ID, "entries").text
    assert "Wash the perch" in today and "-14.00" in today and "Count the seeds" not in today
    assert "Figures as of" in chrome.find_element(By.ID, "freshness").text
    chrome.find_element(By.ID, "prev-day").click()
    WebDriverWait(chrome, 10).until(lambda d: "?day=" in d.current_url)
    yesterday = chrome.find_element(By.ID, "entries").text
    assert "Count the seeds" in yesterday and "twice" in yesterday
    assert "-12.50" in yesterday and "30.00" in yesterday
    assert chrome.find_element(By.ID, "closing").text == "17.50"
    chrome.save_screenshot(str(tmp_path / "worker-yesterday.png"))
    # The date picker is a plain GET form.
    chrome.execute_script("document.getElementById('day').value = '2026-01-01'")
    chrome.find_element(By.ID, "show-day").click()
    WebDriverWait(chrome, 10).until(lambda d: d.current_url.endswith("day=2026-01-01"))
    assert chrome.find_element(By.ID, "no-entries")
    chrome.get(f"{accounting}/accounts/{mango}")
    assert "403" in chrome.find_element(By.TAG_NAME, "h1").text
    assert "not allowed to see other popugs' accounts" in chrome.page_source


def test_accountant_sees_earnings_chart_and_any_account(live_system, chrome, db_dsn, tmp_path):
    from selenium.webdriver.common.by import By

    accounting, kiwi, _ = open_accounting(chrome, live_system, db_dsn, "mango", "/overview")
    # Today: one fee of 14.00 charged, nothing credited.
    assert chrome.find_element(By.ID, "earnings-today").text == "14.00"
    assert chrome.find_element(By.ID, "assigned-today").text == "1"
    bars = chrome.find_elements(By.CSS_SELECTOR, "svg.chart rect.bar")
    assert len(bars) == 30
    rows = chrome.find_elements(By.CSS_SELECTOR, "#days tbody tr")
    assert len(rows) == 30
    # Yesterday: fee 12.50 - reward 30.00.
    assert "-17.50" in rows[1].text
    chrome.save_screenshot(str(tmp_path / "overview.png"))
    chrome.find_element(By.ID, "nav-accounts").click()
    wait_url(chrome, f"{accounting}/accounts")
    chrome.find_element(By.LINK_TEXT, "kiwi").click()
    wait_url(chrome, f"{accounting}/accounts/{kiwi}")
    assert "Account of kiwi" in chrome.find_element(By.TAG_NAME, "h1").text
    assert chrome.find_element(By.ID, "balance").text == "3.50"


def test_admin_reads_analytics_and_a_worker_is_refused(live_system, chrome, db_dsn, tmp_path):
    from selenium.webdriver.common.by import By

    port = live_system
    add_user(db_dsn, "boss", "admin", "boss-password")
    kiwi = add_user(db_dsn, "kiwi", "worker", "kiwi-password")
    seed_account(db_dsn, kiwi, kiwi)  # yesterday "Count the seeds" 30.00; today a fee
    wait_replicated(db_dsn, 3)
    analytics = f"http://analytics.uberpopug.localhost:{port}"
    chrome.get(f"{analytics}/")
    log_in(chrome, "boss", "boss-password")
    assert wait_url(chrome, f"{analytics}/") == f"{analytics}/"
    assert chrome.find_element(By.ID, "earnings-today").text == "14.00"
    assert chrome.find_element(By.ID, "negative-now").text == "0"  # kiwi: 3.50
    assert len(chrome.find_elements(By.CSS_SELECTOR, "svg.chart")) == 2
    assert "30.00 (Count the seeds)" in chrome.find_element(By.ID, "top-overall").text
    rows = chrome.find_elements(By.CSS_SELECTOR, "#days tbody tr")
    assert len(rows) == 30
    assert "most expensive task — 30.00 (Count the seeds)" in rows[1].text
    assert "no completed task" in rows[0].text
    assert "most expensive task — 30.00" in chrome.find_element(By.ID, "top-months").text
    chrome.save_screenshot(str(tmp_path / "analytics.png"))
    chrome.find_element(By.ID, "logout").click()
    wait_url(chrome, f"http://auth.uberpopug.localhost:{port}/login")
    chrome.get(f"{analytics}/")
    log_in(chrome, "kiwi", "kiwi-password")
    wait_url(chrome, f"{analytics}/")
    assert "403" in chrome.find_element(By.TAG_NAME, "h1").text
    assert "not allowed to see analytics" in chrome.page_source
