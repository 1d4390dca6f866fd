"""Benchmark: the tracker's create and list API against a bare Tornado+aiopg baseline.

Starts, in one run, on one database: the real system (bin/popug --service=tracker,
with auth, host routing, validation, the ledger write) and bench/bare_server.py
(one INSERT / one SELECT per request, nothing else). Loads both with the same
keep-alive HTTP client and prints requests/s and the ratios.

    .venv/bin/python bench/bench_tracker.py [--seconds 10] [--connections 32]

Uses UBERPOPUG_BENCH_DSN when set, else an embedded PostgreSQL in a temporary folder.
Not a test: nothing here asserts a timing.
"""

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import bcrypt
import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from popug.common.db import apply_migrations  # noqa: E402

TRACKER = "tasktracker.uberpopug.localhost"
AUTH = "auth.uberpopug.localhost"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_database(dbname="popug_bench"):
    """UBERPOPUG_BENCH_DSN, or a database on an embedded server of its own; migrated."""
    dsn = os.environ.get("UBERPOPUG_BENCH_DSN")
    if not dsn:
        from popug.common.embedded import start_embedded

        dsn = start_embedded(Path(tempfile.mkdtemp(prefix="popug-bench-")), dbname)
    apply_migrations(dsn)
    return dsn


def setup_database(dsn):
    pw = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(4)).decode()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE core.ledger, core.tasks, core.sso_codes, core.sessions,"
            " core.login_failures, core.users RESTART IDENTITY CASCADE"
        )
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email)"
            " VALUES ('boss', %s, 'manager', 'boss@bench')",
            (pw,),
        )
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email)"
            " SELECT 'worker' || i, %s, 'worker', 'w' || i || '@bench'"
            "   FROM generate_series(1, 20) i",
            (pw,),
        )
        # 150 open tasks for worker1, 3000 for the others: the list returns 100 rows.
        cur.execute(
            "INSERT INTO core.tasks (title, description, assignee_id, assign_fee, reward,"
            " created_by) SELECT 'seeded task ' || i, 'a description of task ' || i,"
            " CASE WHEN i <= 150 THEN 2 ELSE 3 + i % 19 END, 15.00, 30.00, 1"
            " FROM generate_series(1, 3150) i"
        )
        cur.execute(
            "INSERT INTO core.ledger (user_id, task_id, kind, amount)"
            " SELECT assignee_id, id, 'fee', -assign_fee FROM core.tasks"
        )
        cur.execute("ANALYZE")
        cur.execute("SELECT id FROM core.users WHERE username = 'worker1'")
        return cur.fetchone()[0]


def wait_ready(port, host):
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Host": host})
            with urllib.request.urlopen(req, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"server on port {port} did not start")


def get_token(dsn, username):
    """A bearer token made the way POST /api/v1/tokens makes one (auth is not running here)."""
    from popug.common.sessions import hash_token, new_token

    token = new_token()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.sessions (token_hash, user_id, kind, expires_at)"
            " SELECT %s, id, 'api', now() + interval '1 day' FROM core.users WHERE username = %s",
            (hash_token(token), username),
        )
    return token


async def load(port, method, path, host, headers, body, seconds, connections):
    """Keep-alive HTTP/1.1 load: returns (requests/s, statuses, p50 ms, p99 ms)."""
    payload = body.encode() if body else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(payload)}\r\n"
    for k, v in headers.items():
        head += f"{k}: {v}\r\n"
    request = head.encode() + b"\r\n" + payload
    statuses = {}
    latencies = []
    stop_at = time.perf_counter() + seconds

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                status_line = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                code = int(status_line.split()[1])
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(connections)])
    elapsed = time.perf_counter() - t0
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else 0
    return len(latencies) / elapsed, statuses, statistics.median(latencies) * 1000, p99 * 1000


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds; best is kept")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="popug-bench-"))
    dsn = bench_database()
    me = setup_database(dsn)
    popug_port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPUG_")}
    # Access logging off in both: the baseline has none either.
    env.update(POPUG_DATABASE__DSN=dsn, POPUG_DATA_DIR=str(tmp / "var"), POPUG_LOG_LEVEL="WARNING")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "bin" / "popug"),
                "--service=tracker",
                "--port",
                str(popug_port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "bare_server.py"), dsn, str(bare_port), str(me)],
            env=env,
            stdout=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_ready(popug_port, TRACKER)
        wait_ready(bare_port, "localhost")
        boss = {
            "Authorization": f"Bearer {get_token(dsn, 'boss')}",
            "Content-Type": "application/json",
        }
        worker = {"Authorization": f"Bearer {get_token(dsn, 'worker1')}"}
        task = json.dumps({"title": "Benchmark task", "description": "created by the bench"})
        cases = {
            ("create", "bare"): (
                bare_port,
                "POST",
                "/insert",
                "localhost",
                {"Content-Type": "application/json"},
                task,
            ),
            ("create", "popug"): (popug_port, "POST", "/api/v1/tasks", TRACKER, boss, task),
            ("list", "bare"): (bare_port, "GET", "/select", "localhost", {}, None),
            ("list", "popug"): (
                popug_port,
                "GET",
                "/api/v1/tasks?assignee=me&status=open",
                TRACKER,
                worker,
                None,
            ),
        }
        best = {}
        for rnd in range(args.rounds):
            for key, case in cases.items():
                asyncio.run(load(*case, seconds=1, connections=args.connections))  # warm up
                rps, statuses, p50, p99 = asyncio.run(
                    load(*case, seconds=args.seconds, connections=args.connections)
                )
                print(
                    f"round {rnd + 1} {key[0]:6} {key[1]:5} {rps:8.0f} req/s  "
                    f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  statuses {statuses}",
                    flush=True,
                )
                if rps > best.get(key, (0,))[0]:
                    best[key] = (rps, statuses)
        print()
        print(f"{'operation':10} {'popug req/s':>12} {'bare req/s':>12} {'ratio':>7} {'target':>7}")
        for op, target in (("create", 0.5), ("list", 0.6)):
            p, b = best[(op, "popug")][0], best[(op, "bare")][0]
            print(f"{op:10} {p:12.0f} {b:12.0f} {p / b:7.2f} {'>= ' + str(target):>7}")
        print(
            f"\n{args.connections} keep-alive connections, {args.seconds:g} s per run, best of "
            f"{args.rounds} rounds, one server process each, {os.cpu_count()} cores shared "
            "with PostgreSQL and the client"
        )
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=20)


if __name__ == "__main__":
    main()
