"""A short load test: several tracker processes and the other services on one database,
many clients at once; afterwards every ledger invariant holds and the replicas verify."""

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import psycopg2
import pytest
from tornado.netutil import DefaultLoopResolver, OverrideResolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from bench.bench_load import (
    HOSTS,
    PASSWORD,
    System,
    check_invariants,
    run_load,
    seed_users,
    seed_yesterday,
    unexpected_5xx,
)
from bench.bench_tracker import free_port, wait_ready
from popug.common.config import load_config
from tests.conftest import Browser

REPO = Path(__file__).resolve().parent.parent


def test_a_short_load_on_two_trackers_loses_nothing(db_dsn):
    seed_users(db_dsn, managers=3, workers=12)
    system = System(db_dsn, trackers=2, interval_s=1)
    seed_yesterday(db_dsn)  # paid by the accounting service during the load
    try:
        results, counts, _ = asyncio.run(
            run_load(system, clients=24, seconds=6, managers=3, workers=12, close_at=3)
        )
        found, verify = check_invariants(system, counts, workers=12)
    finally:
        codes = system.stop()
    assert counts["created"] > 20 and results["complete"] and results["shuffle"]
    assert unexpected_5xx(results) == 0
    assert [(what, n) for what, n in found if n] == [], verify
    assert codes == [0] * len(codes)  # every process stopped cleanly on SIGTERM


NGINX = shutil.which("nginx")


def nginx_in_front(tmp_path, system, port):
    """The sample config/nginx/uberpopug.conf, on `port`, for the processes of `system`."""
    conf = (REPO / "config" / "nginx" / "uberpopug.conf").read_text()
    ports = {
        "landing": [system.ports["auth"]],  # no landing process here: any answers
        "tracker": system.tracker_ports,
        **{s: [system.ports[s]] for s in ("accounting", "auth", "replicator", "notifier")},
        "analytics": [system.ports["accounting"]],
    }
    for service, numbers in ports.items():
        servers = " ".join(f"server 127.0.0.1:{n};" for n in numbers)
        conf = re.sub(
            rf"(upstream popug_{service}\s+\{{)[^}}]*?(keepalive \d+; )?\}}",
            rf"\1 {servers} \2}}",
            conf,
        )
    conf = conf.replace("listen 80;", f"listen 127.0.0.1:{port};")
    conf = conf.replace("uberpopug.com", "uberpopug.localhost")
    (tmp_path / "logs").mkdir()
    (tmp_path / "uberpopug.conf").write_text(conf)
    (tmp_path / "nginx.conf").write_text(
        f"daemon off;\nevents {{}}\npid {tmp_path}/nginx.pid;\n"
        f"error_log {tmp_path}/logs/error.log;\n"
        f"http {{ access_log off; include {tmp_path}/uberpopug.conf; }}\n"
    )
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")])
    wait_ready(port, HOSTS["tracker"])
    return proc


@pytest.mark.skipif(not NGINX, reason="nginx is not installed here")
@pytest.mark.gen_test(timeout=90)
async def test_sso_sessions_and_rules_hold_across_processes_behind_nginx(db_dsn, tmp_path):
    seed_users(db_dsn, managers=1, workers=2)
    system = System(db_dsn, trackers=2, interval_s=1, POPUG_SERVER__XHEADERS="true")
    port = free_port()
    nginx = nginx_in_front(tmp_path, system, port)
    config = load_config(None, environ={}, overrides={"database.dsn": db_dsn})
    env = SimpleNamespace(config=config, port=port)
    env.http = SimpleAsyncHTTPClient(
        force_instance=True,
        resolver=OverrideResolver(
            resolver=DefaultLoopResolver(), mapping={h: "127.0.0.1" for h in HOSTS.values()}
        ),
    )
    try:
        manager = Browser(env)
        r = await manager.login("manager1", PASSWORD)  # tracker -> auth -> code -> tracker
        assert r.status == 200 and r.url.startswith(f"http://{HOSTS['tracker']}:{port}/")
        # Every request may land on either tracker process: the session holds on both.
        for i in range(6):
            r = await manager.post("tracker", "/tasks", form={"title": f"via nginx {i}"})
            assert r.status == 200 and "Created task #" in r.text, r
        worker = Browser(env)
        await worker.login("worker1", PASSWORD)
        for _ in range(4):
            r = await worker.get("tracker", "/tasks/new")
            assert r.status == 403  # the rules hold on both processes
        # The client address nginx passed on is the one auth throttles by.
        for _ in range(3):
            await Browser(env).request(
                "POST",
                f"http://{HOSTS['auth']}:{port}/login",
                form={"username": "nobody", "password": "wrong", "next": ""},
            )
        with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT DISTINCT address FROM core.login_failures")
            assert cur.fetchall() == [("127.0.0.1",)]
        # Logout on one process ends the session everywhere.
        await manager.post("tracker", "/logout")
        for _ in range(3):
            r = await manager.get("tracker", "/tasks", follow=False)
            assert r.status == 302 and "/login" in r.location
    finally:
        env.http.close()
        nginx.terminate()
        nginx.wait(timeout=10)
        codes = system.stop()
    assert codes == [0] * len(codes)
