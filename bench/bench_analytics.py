"""Benchmark: the analytics API and page on a year of data, against the bare SQL they run.

In one run, on one embedded PostgreSQL (or UBERPOPUG_BENCH_DSN): 10,000
popugs, 1,000,000 tasks completed over the last 365 days (3,000,000 ledger
rows, as in bench_accounting.py), copied into the analytics replica; then
bin/popug --service=analytics, timed one request at a time on a keep-alive
connection against the bare statements of the same figures on a plain
psycopg2 connection: the summary of today, the most expensive task per day,
week and month of the whole year, and the dashboard page (30 days and a
year). Prints the median times and the ratios (target <= 3x). Not a test.

    .venv/bin/python bench/bench_analytics.py [--tasks 1000000] [--popugs 10000] [--repeat 10]
"""

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_accounting import bare, median_ms, page, replicate, seed  # noqa: E402
from bench.bench_tracker import free_port, get_token, wait_ready  # noqa: E402
from popug.analytics import queries as q  # noqa: E402
from popug.common import days, reports  # noqa: E402
from popug.common.config import load_config  # noqa: E402
from popug.common.db import apply_migrations  # noqa: E402

HOST = "analytics.uberpopug.localhost"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", type=int, default=1_000_000)
    p.add_argument("--popugs", type=int, default=10_000)
    p.add_argument("--repeat", type=int, default=10)
    args = p.parse_args()

    dsn = os.environ.get("UBERPOPUG_BENCH_DSN")
    if not dsn:
        from popug.common.embedded import start_embedded

        dsn = start_embedded(Path(tempfile.mkdtemp(prefix="popug-bench-")), "popug_bench")
    apply_migrations(dsn)
    config = load_config(None, environ={}, overrides={"database.dsn": dsn})
    calendar = days.BusinessCalendar.from_config(config)
    t0 = time.perf_counter()
    seed(dsn, args.tasks, args.popugs)
    print(
        f"seeded {args.tasks} completed tasks, {3 * args.tasks} ledger rows in "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    replicate(dsn, config, "analytics")
    admin_token = get_token(dsn, "boss")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPUG_")}
    env.update(
        POPUG_DATABASE__DSN=dsn,
        POPUG_LOG_LEVEL="WARNING",
        POPUG_DATA_DIR=tempfile.mkdtemp(prefix="popug-bench-var-"),
    )
    server = subprocess.Popen(
        [sys.executable, str(REPO / "bin" / "popug"), "--service=analytics", "--port", str(port)],
        env=env,
    )
    schema = lambda sql: sql.replace("{s}", '"analytics"')  # noqa: E731
    today = calendar.today()
    year = (today - dt.timedelta(days=365), today)
    month = (today - dt.timedelta(days=29), today)

    def summary_sql(day):
        s, e = calendar.bounds(day)
        return [(schema(q.SUMMARY), (e, day, s, e))]

    def top_sql(kind, first, last):
        spans = q.periods(kind, first, last)
        starts = [calendar.starts(a) for a, _ in spans]
        ends = [calendar.bounds(b)[1] for _, b in spans]
        params = ([a for a, _ in spans], [b for _, b in spans], starts, ends)
        return [(schema(q.MOST_EXPENSIVE), params)]

    def page_sql(first, last):
        d, st, en = reports.bounds_arrays(calendar, days.day_range(first, last))
        return (
            (summary_sql(today) if last != today else [])
            + [(schema(reports.DAILY_FIGURES), (d, st, en, first, last))]
            + [(schema(q.NEGATIVE_PER_DAY), (d, st, en, st[0], first, first, last))]
            + sum((top_sql(k, first, last) for k in q.PERIODS), [])
            + top_sql("day", today, today)
        )

    try:
        wait_ready(port, HOST)
        y = f"from={year[0]}&to={year[1]}"
        cases = [
            ("summary of today", "/api/v1/summary", summary_sql(today)),
            (
                "most expensive per day, a year",
                f"/api/v1/most-expensive?period=day&{y}",
                top_sql("day", *year),
            ),
            (
                "most expensive per week, a year",
                f"/api/v1/most-expensive?period=week&{y}",
                top_sql("week", *year),
            ),
            (
                "most expensive per month, a year",
                f"/api/v1/most-expensive?period=month&{y}",
                top_sql("month", *year),
            ),
            ("dashboard page, 30 days", "/", page_sql(*month)),
            ("dashboard page, a year", f"/?{y}", page_sql(*year)),
        ]
        print(f"\n{'what':40} {'popug ms':>9} {'bare ms':>9} {'ratio':>6}  target", flush=True)
        for name, path, statements in cases:
            run, conn = bare(dsn, statements)
            try:
                bare_ms = median_ms(run, args.repeat)
            finally:
                conn.close()
            popug_ms = median_ms(page(port, path, admin_token, HOST), args.repeat)
            print(
                f"{name:40} {popug_ms:9.1f} {bare_ms:9.1f} {popug_ms / bare_ms:6.2f}  <= 3",
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM analytics.tasks WHERE status = 'done'")
        print(f"\n({cur.fetchone()[0]} completed tasks in the analytics replica)")


if __name__ == "__main__":
    main()
