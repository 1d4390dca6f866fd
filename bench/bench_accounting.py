"""Benchmark: accounting pages on a big replica, against the bare SQL they run; the close.

In one run, on one embedded PostgreSQL (or UBERPOPUG_BENCH_DSN):
  1. seed 10,000 popugs, 1,000,000 tasks over the last 365 days and
     3,000,000 ledger rows (each task: its fee, a second fee from a shuffle,
     its reward), and copy them into the accounting replica (a full cycle);
  2. start the real service (bin/popug --service=accounting) and time, one
     request at a time, a worker's dashboard page (/ for a busy day) and the
     admin's per-day table (/overview, 30 days; and a whole year), against
     the bare statements of the same figures run on a plain psycopg2
     connection; print the median times and their ratios (target <= 3x);
  3. close one business day for the 10,000 popugs (payouts + emails) and
     print its time.
Not a test: nothing asserts a timing.

    .venv/bin/python bench/bench_accounting.py [--tasks 1000000] [--popugs 10000] [--repeat 30]
"""

import argparse
import asyncio
import datetime as dt
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_tracker import bench_database, free_port, get_token, wait_ready  # noqa: E402
from popug.accounting import queries as q  # noqa: E402
from popug.common import days, reports  # noqa: E402
from popug.common.config import load_config  # noqa: E402
from popug.common.db import Database  # noqa: E402
from popug.replicator import engine  # noqa: E402
from popug.replicator.service import replicas_from_config  # noqa: E402

HOST = "accounting.uberpopug.localhost"


def seed(dsn, tasks, popugs):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE core.ledger, core.outbox, core.tasks, core.sessions, core.sso_codes,"
            " core.closed_days, core.users RESTART IDENTITY CASCADE"
        )
        cur.execute("DROP SCHEMA IF EXISTS accounting CASCADE")
        cur.execute("DROP SCHEMA IF EXISTS analytics CASCADE")
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email)"
            " VALUES ('boss', 'x', 'admin', 'boss@bench')"
        )
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email)"
            " SELECT 'w' || i, 'x', 'worker', 'w' || i || '@bench'"
            " FROM generate_series(1, %s) i",
            (popugs,),
        )
        # Spread over the last 365 days; fees 10.00-15.00, rewards 20.00-40.00.
        cur.execute(
            "INSERT INTO core.tasks (title, description, assignee_id, assign_fee, reward,"
            " created_by, status, created_at, assigned_at, completed_at)"
            " SELECT 'task ' || i, 'description of task ' || i, 2 + i %% %s,"
            "  10 + (i %% 500) / 100.0, 20 + (i %% 2000) / 100.0, 1, 'done', at, at,"
            "  at + interval '1 hour'"
            " FROM (SELECT i, now() - interval '365 days' * (1 - i::float / %s) AS at"
            "         FROM generate_series(1, %s) i) s",
            (popugs, tasks, tasks),
        )
        cur.execute(
            "INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)"
            " SELECT assignee_id, id, 'fee', -assign_fee, created_at FROM core.tasks"
            " UNION ALL SELECT assignee_id, id, 'fee', -assign_fee,"
            "   created_at + interval '30 minutes' FROM core.tasks"
            " UNION ALL SELECT assignee_id, id, 'reward', reward, completed_at FROM core.tasks"
            " ORDER BY 5"
        )
        cur.execute("ANALYZE")


def replicate(dsn, config, name="accounting"):
    replica = {r.name: r for r in replicas_from_config(config)}[name]
    t0 = time.perf_counter()
    result = engine.run_cycle(dsn, replica, full=True)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f"VACUUM ANALYZE {name}.ledger, {name}.tasks, {name}.users")
    conn.close()
    rows = {t: v["rows"] for t, v in result.tables.items()}
    print(f"replicated into {name} in {time.perf_counter() - t0:.1f} s: {rows}")


def close_history(dsn, calendar, through):
    """Every day before `through` counts as closed: the bench closes one day, not a year."""
    first = through - dt.timedelta(days=400)
    rows = []
    for day in days.day_range(first, through - dt.timedelta(days=1)):
        s, e = calendar.bounds(day)
        rows.append((day, s, e))
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO core.closed_days (day, starts_at, ends_at, early, popugs_paid,"
            " total_paid, closed_by) VALUES (%s, %s, %s, false, 0, 0, 'bench')",
            rows,
        )


def busiest_worker(dsn, calendar, day):
    s, e = calendar.bounds(day)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT u.username, u.id, count(*) FROM accounting.ledger l"
            " JOIN accounting.users u ON u.id = l.user_id"
            " WHERE l.created_at >= %s AND l.created_at < %s GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 1",
            (s, e),
        )
        return cur.fetchone()


def median_ms(fn, repeat):
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def page(port, path, token, host=HOST):
    """GET on one keep-alive connection, as a browser reuses its connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Host": host, "Authorization": f"Bearer {token}"}

    def fetch():
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body[:300])
        return body

    return fetch


def bare(dsn, statements):
    """The figures' own statements on a plain connection, nothing around them."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True

    def run():
        with conn.cursor() as cur:
            for sql, params in statements:
                cur.execute(sql, params)
                cur.fetchall()

    return run, conn


def year_of_data(repeat_default):
    """Arguments, a database (embedded or UBERPOPUG_BENCH_DSN) and the seeded year."""
    p = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--popugs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=repeat_default)
    args = p.parse_args()
    dsn = bench_database()
    config = load_config(None, environ={}, overrides={"database.dsn": dsn})
    t0 = time.perf_counter()
    seed(dsn, args.tasks, args.popugs)
    print(
        f"seeded {args.tasks} completed tasks, {3 * args.tasks} ledger rows in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return args, dsn, config, days.BusinessCalendar.from_config(config)


def start_service(dsn, service, **env_vars):
    """bin/popug --service=<service> on a free port of its own; returns (Popen, port)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPUG_")}
    env.update(
        POPUG_DATABASE__DSN=dsn,
        POPUG_LOG_LEVEL="WARNING",
        POPUG_DATA_DIR=tempfile.mkdtemp(prefix="popug-bench-var-"),
        **env_vars,
    )
    server = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "popug"), f"--service={service}", "--port", str(port)],
        env=env,
    )
    wait_ready(port, f"{service}.uberpopug.localhost")
    return server, port


def main():
    args, dsn, config, calendar = year_of_data(30)
    replicate(dsn, config)
    today = calendar.today()
    yesterday = today - dt.timedelta(days=1)
    close_history(dsn, calendar, yesterday)

    async def close_one():
        db = await Database.connect(dsn, 1, 2, 600)
        try:
            t0 = time.perf_counter()
            rows = await q.close_days_through(db, calendar, yesterday, "bench", "http://x/")
            return rows, time.perf_counter() - t0
        finally:
            await db.close()

    rows, seconds = asyncio.run(close_one())
    [row] = rows
    close_line = (
        f"close-day {row.day} for {args.popugs} popugs: {row.popugs_paid} paid "
        f"{row.total_paid} in total (payouts and emails) in {seconds:.2f} s"
    )
    # The pages below read the replica as it was before this close: same figures.
    username, user_id, entries = busiest_worker(dsn, calendar, yesterday)
    worker_token = get_token(dsn, username)
    admin_token = get_token(dsn, "boss")
    server, port = start_service(dsn, "accounting", POPUG_ACCOUNTING__CLOSE_CHECK_S="86400")
    try:
        schema = lambda sql: sql.replace("{s}", '"accounting"')  # noqa: E731
        s, e = calendar.bounds(yesterday)
        dashboard_sql = [
            (
                schema(q.ACCOUNT_DAY),
                (user_id, s, yesterday, e, yesterday, yesterday)
                + (user_id, s, e, yesterday, q.ENTRIES_LIMIT + 1),
            ),
        ]

        def per_day_sql(first, last):
            d, st, en = reports.bounds_arrays(calendar, days.day_range(first, last))
            return [(schema(reports.DAILY_FIGURES), (d, st, en, first, last))]

        month = (today - dt.timedelta(days=29), today)
        year = (today - dt.timedelta(days=365), today)
        print(f"\n{'what':44} {'popug ms':>9} {'bare ms':>9} {'ratio':>6}  target")
        cases = [
            (
                f"worker dashboard ({entries} entries that day)",
                page(port, f"/?day={yesterday}", worker_token),
                dashboard_sql,
            ),
            (
                "admin per-day table (30 days)",
                page(port, "/overview", admin_token),
                per_day_sql(*month),
            ),
            (
                "admin per-day table (366 days)",
                page(port, f"/overview?from={year[0]}&to={year[1]}", admin_token),
                per_day_sql(*year),
            ),
            (
                "earnings API, one day",
                page(port, f"/api/v1/earnings?day={yesterday}", admin_token),
                per_day_sql(yesterday, yesterday),
            ),
        ]
        for name, fetch, statements in cases:
            run, conn = bare(dsn, statements)
            try:
                bare_ms = median_ms(run, args.repeat)
            finally:
                conn.close()
            popug_ms = median_ms(fetch, args.repeat)
            print(f"{name:44} {popug_ms:9.1f} {bare_ms:9.1f} {popug_ms / bare_ms:6.2f}  <= 3")
    finally:
        server.terminate()
        server.wait(timeout=30)
    print("\n" + close_line)


if __name__ == "__main__":
    main()
