"""Operations: /healthz per service with its duties, /metrics for Prometheus."""

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from popug.replicator.service import Replicator
from tests.conftest import Browser

REPO = Path(__file__).resolve().parent.parent


def metric(text, name, **labels):
    """The value of one sample in a Prometheus text exposition, or None."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            return float(value)
    return None


@pytest.mark.gen_test
async def test_metrics_count_requests_and_read_the_database_figures(env, app):
    manager = await env.api("manager", email="boss@popug.test")
    await env.user("worker")
    # The counters belong to the process (other tests counted too): compare.
    before = (await Browser(env).get("tracker", "/metrics")).text

    def more(name, **labels):
        return metric(text, name, **labels) - (metric(before, name, **labels) or 0)

    for i in range(3):
        assert (await manager.post("tracker", "/api/v1/tasks", json={"title": f"t{i}"})).status
    await manager.get("tracker", "/api/v1/tasks/999999")
    await Replicator(env.config, env.db).cycle_all()
    r = await Browser(env).get("tracker", "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.text
    assert more("popug_requests_total", handler="TasksApiHandler", status="201") == 3
    assert more("popug_requests_total", handler="TaskApiHandler", status="404") == 1
    assert more("popug_request_duration_seconds_count", handler="TasksApiHandler") == 3
    assert metric(text, "popug_db_up") == 1
    assert metric(text, "popug_db_pool_max") == 20
    assert metric(text, "popug_outbox_messages", state="pending") == 3  # the assignment emails
    lag = metric(text, "popug_replication_lag_seconds", replica="accounting")
    assert lag is not None and 0 <= lag < 60
    assert metric(text, "popug_replication_failing", replica="analytics") == 0


@pytest.mark.gen_test
async def test_healthz_reports_a_failing_duty_on_its_own_service_only(env, app):
    cfg = copy.deepcopy(env.config)
    cfg.replication.replicas["accounting"]["dsn"] = "host=127.0.0.1 port=1 connect_timeout=1"
    replicator = Replicator(cfg, env.db)
    app.settings["popug_duties"] = [replicator]
    browser = Browser(env)
    assert (await browser.get("replicator", "/healthz")).text == "ok\n"
    await replicator._safe_pass()
    r = await browser.get("replicator", "/healthz")
    assert r.status == 503 and "replication failing: accounting:" in r.text
    assert (await browser.get("tracker", "/healthz")).status == 200  # not the tracker's duty
    r = await browser.get("replicator", "/metrics")
    assert metric(r.text, "popug_duty_healthy", duty="replicator") == 0
    # It recovers with the next good pass.
    replicator.replicas = [r for r in replicator.replicas if r.name != "accounting"]
    await replicator._safe_pass()
    assert (await browser.get("replicator", "/healthz")).status == 200


@pytest.mark.gen_test
async def test_an_exhausted_pool_answers_503_with_retry_after_not_a_hang(env):
    worker = await env.api("worker")
    browser = await env.browser("worker")
    env.db.acquire_timeout_s = 0.3
    held = [await env.db.pool.acquire() for _ in range(env.db.pool.maxsize)]
    try:
        r = await worker.get("tracker", "/api/v1/tasks?assignee=me")
        assert r.status == 503 and r.headers["Retry-After"] == "2"
        assert "all 20 database connections were in use" in r.json()["error"]
        page = await browser.get("tracker", "/")
        assert page.status == 503 and "busy right now" in page.text
    finally:
        for conn in held:
            await env.db.pool.release(conn)
    assert (await worker.get("tracker", "/api/v1/tasks?assignee=me")).status == 200


@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_disconnects_mid_request_leaves_nothing_open(env, db_dsn):
    import asyncio

    import psycopg2

    from popug.tracker.queries import SHUFFLE_LOCK

    manager = await env.api("manager")
    await env.user("worker")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "to shuffle"})
    blocker = psycopg2.connect(db_dsn)
    blocker.autocommit = True
    with blocker.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (SHUFFLE_LOCK,))  # the shuffle waits on it
    reader, writer = await asyncio.open_connection("127.0.0.1", env.port)
    writer.write(
        b"POST /api/v1/tasks/shuffle HTTP/1.1\r\nHost: tasktracker.uberpopug.localhost\r\n"
        + f"Authorization: Bearer {manager.token}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.5)
    writer.close()  # gone before the answer
    with blocker.cursor() as cur:
        cur.execute("SELECT pg_advisory_unlock(%s)", (SHUFFLE_LOCK,))
    blocker.close()
    for _ in range(50):
        await asyncio.sleep(0.1)
        if env.db.pool.freesize == env.db.pool.size:
            break
    assert env.db.pool.freesize == env.db.pool.size  # every connection is back
    stuck = await env.scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND state LIKE 'idle in transaction%%'"
    )
    assert stuck == 0
    # The shuffle itself ran to its end: one more fee, nothing half-written.
    assert await env.scalar("SELECT count(*) FROM core.ledger WHERE kind = 'fee'") == 2


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
NGINX = shutil.which("nginx")


@pytest.mark.skipif(not SYSTEMD_ANALYZE, reason="systemd-analyze is not installed here")
def test_the_systemd_unit_verifies(tmp_path):
    unit = (REPO / "config" / "systemd" / "popug@.service").read_text()
    # As installed: the checkout and its virtualenv where the unit expects them.
    unit = unit.replace(
        "/opt/uberpopug/.venv/bin/popug", str(Path(sys.executable).parent / "popug")
    )
    unit = unit.replace("/opt/uberpopug", str(REPO))
    path = tmp_path / "popug@tracker.service"
    path.write_text(unit)
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True)
    assert r.returncode == 0 and "popug@tracker.service" not in r.stderr, r.stderr


@pytest.mark.skipif(not NGINX, reason="nginx is not installed here")
def test_the_nginx_sample_is_a_valid_config(tmp_path):
    (tmp_path / "logs").mkdir()
    conf = (REPO / "config" / "nginx" / "uberpopug.conf").read_text()
    (tmp_path / "uberpopug.conf").write_text(conf.replace("listen 80;", "listen 127.0.0.1:18181;"))
    (tmp_path / "nginx.conf").write_text(
        f"events {{}}\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\n"
        f"http {{ access_log off; include {tmp_path}/uberpopug.conf; }}\n"
    )
    r = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "test is successful" in r.stderr, r.stderr


def test_sigterm_lets_a_running_replication_cycle_end_and_changes_nothing_half(db_dsn, tmp_path):
    """A cycle stuck behind a reader's lock when SIGTERM comes: the process waits for
    it to end (here: roll back at its lock timeout), then exits 0; the replica is whole."""
    import time

    import psycopg2

    from tests.test_cli import serve_on_dsn

    proc, _, log = serve_on_dsn(
        db_dsn, tmp_path, "--service=replicator", POPUG_REPLICATION__INTERVAL_S="0.5"
    )
    try:
        conn = psycopg2.connect(db_dsn)
        with conn.cursor() as cur:
            for _ in range(100):  # the first cycle made the replica
                cur.execute("SELECT to_regclass('accounting._replica_state') IS NOT NULL")
                if cur.fetchone()[0]:
                    break
                conn.rollback()
                time.sleep(0.1)
            cur.execute("SELECT count(*) FROM accounting.users")
            users_before = cur.fetchone()[0]
        conn.commit()
        with conn.cursor() as cur:  # a new user for the next cycle to copy
            cur.execute(
                "INSERT INTO core.users (username, password_hash, role, email)"
                " VALUES ('kiwi', 'x', 'worker', 'kiwi@popug.test')"
            )
        conn.commit()
        with conn.cursor() as cur:  # a reader's lock the copy has to wait for
            cur.execute("LOCK TABLE accounting.users IN ACCESS EXCLUSIVE MODE")
        time.sleep(1.5)  # the cycle is under way, waiting
        started = time.monotonic()
        proc.terminate()
        time.sleep(0.5)
        assert proc.poll() is None  # still letting the cycle end
        conn.rollback()  # the reader lets go; the cycle can finish or has rolled back
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 30
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM accounting.users")
            after = cur.fetchone()[0]
            cur.execute("SELECT count(*) FROM core.users")
            master = cur.fetchone()[0]
        conn.close()
        assert after in (users_before, master)  # the old copy or the new one, never half
        text = log.read_text()
        assert "received SIGTERM: stopping" in text and "stopped" in text
        assert "Traceback" not in text
    finally:
        if proc.poll() is None:
            proc.kill()
