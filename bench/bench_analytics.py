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

import datetime as dt
import sys
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_accounting import (  # noqa: E402
    bare,
    median_ms,
    page,
    replicate,
    start_service,
    year_of_data,
)
from bench.bench_tracker import get_token  # noqa: E402
from popug.analytics import queries as q  # noqa: E402
from popug.common import days, reports  # noqa: E402

HOST = "analytics.uberpopug.localhost"


def main():
    args, dsn, config, calendar = year_of_data(10)
    replicate(dsn, config, "analytics")
    admin_token = get_token(dsn, "boss")
    server, port = start_service(dsn, "analytics")
    schema = lambda sql: sql.replace("{s}", '"analytics"')  # noqa: E731
    today = calendar.today()
    year = (today - dt.timedelta(days=365), today)
    month = (today - dt.timedelta(days=29), today)

    def summary_sql(day):
        s, e = calendar.bounds(day)
        return [(schema(q.SUMMARY), (e, day, s, e))]

    def top_sql(kind, first, last):
        return [(schema(q.MOST_EXPENSIVE), q.periods_params(calendar, kind, first, last))]

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
