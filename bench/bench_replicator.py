"""Benchmark: the replicator's full dump and incremental cycle, and its lag under writes.

In one run, on one embedded PostgreSQL (or UBERPOPUG_BENCH_DSN):
  1. seed 1,000,000 tasks;
  2. a full dump by the replicator (engine.run_cycle, full=True) against the
     bare pipe it is built on: COPY ... TO STDOUT | COPY ... FROM STDIN of the
     same rows into a table of the same shape (with its primary key);
  3. an incremental cycle after changing 1% of the rows;
  4. replication lag while 100 tasks/s are written for --lag-seconds (60).
Prints rows/s and the ratios. Not a test: nothing asserts a timing.

    .venv/bin/python bench/bench_replicator.py [--rows 1000000] [--lag-seconds 60]
"""

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_tracker import bench_database  # noqa: E402
from popug.common.config import REPLICABLE_COLUMNS  # noqa: E402
from popug.replicator import engine  # noqa: E402


def seed(dsn, rows):
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE core.ledger, core.outbox, core.tasks, core.sessions,"
            " core.sso_codes, core.users RESTART IDENTITY CASCADE"
        )
        cur.execute("DROP SCHEMA IF EXISTS bench_replica CASCADE")
        cur.execute("DROP SCHEMA IF EXISTS bench_raw CASCADE")
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email)"
            " SELECT 'w' || i, 'x', CASE WHEN i = 1 THEN 'manager' ELSE 'worker' END,"
            " 'w' || i || '@bench' FROM generate_series(1, 100) i"
        )
        cur.execute(
            "INSERT INTO core.tasks (title, description, assignee_id, assign_fee, reward,"
            " created_by) SELECT 'task ' || i, 'description of task ' || i || E'\\twith a tab',"
            " 2 + i %% 99, 10 + (i %% 1000) / 100.0, 20 + (i %% 2000) / 100.0, 1"
            " FROM generate_series(1, %s) i",
            (rows,),
        )
        cur.execute("ANALYZE core.tasks")


def raw_pipe(dsn, cols):
    """The baseline: the same COPY pipe with none of the replicator around it."""
    ident = ", ".join(cols)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("CREATE SCHEMA bench_raw")
        cur.execute(
            "CREATE TABLE bench_raw.tasks AS SELECT " + ident + " FROM core.tasks WITH NO DATA"
        )
        cur.execute("ALTER TABLE bench_raw.tasks ADD PRIMARY KEY (id)")
    src, dst = psycopg2.connect(dsn), psycopg2.connect(dsn)
    t0 = time.perf_counter()
    with (
        src.cursor() as sc,
        dst.cursor() as dc,
        tempfile.SpooledTemporaryFile(max_size=engine.SPOOL_BYTES) as buf,
    ):
        sc.copy_expert(
            f"COPY (SELECT {ident} FROM core.tasks ORDER BY id) TO STDOUT (FORMAT binary)", buf
        )
        buf.seek(0)
        dc.copy_expert(f"COPY bench_raw.tasks ({ident}) FROM STDIN (FORMAT binary)", buf)
    dst.commit()
    elapsed = time.perf_counter() - t0
    src.close()
    dst.close()
    return elapsed


def measure_lag(dsn, replica, seconds, interval, rate=100):
    """Write `rate` tasks/s; a replicator cycles every `interval`; lag of each write."""
    stop = threading.Event()
    written = {}  # task id -> time committed
    lags = []
    errors = []

    def writer():
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()
        next_at = time.monotonic()
        while not stop.is_set():
            cur.execute(
                "INSERT INTO core.tasks (title, assignee_id, assign_fee, reward,"
                " created_by) VALUES ('lag probe', 2, 15, 30, 1) RETURNING id"
            )
            written[cur.fetchone()[0]] = time.monotonic()
            next_at += 1.0 / rate
            time.sleep(max(0.0, next_at - time.monotonic()))
        conn.close()

    def replicator():
        seen_up_to = 0
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        while not stop.is_set():
            started = time.monotonic()
            try:
                engine.run_cycle(dsn, replica)
            except Exception as e:  # a bench reports, it does not hide
                errors.append(engine.describe(e))
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM bench_replica.tasks WHERE id > %s", (seen_up_to,))
                now = time.monotonic()
                for (task_id,) in cur.fetchall():
                    if task_id in written:
                        lags.append(now - written[task_id])
                    seen_up_to = max(seen_up_to, task_id)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        conn.close()

    threads = [threading.Thread(target=writer), threading.Thread(target=replicator)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return lags, len(written), errors


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--lag-seconds", type=float, default=60)
    ap.add_argument("--interval", type=float, default=5, help="replication.interval_s")
    args = ap.parse_args()

    dsn = bench_database()
    t0 = time.perf_counter()
    seed(dsn, args.rows)
    print(f"seeded {args.rows:,} tasks in {time.perf_counter() - t0:.1f} s", flush=True)

    cols = REPLICABLE_COLUMNS["tasks"]
    replica = engine.Replica("bench", "bench_replica", None, {"tasks": cols})
    raw = raw_pipe(dsn, cols)
    full = engine.run_cycle(dsn, replica, full=True)
    print(f"raw COPY pipe    {args.rows / raw:12,.0f} rows/s  ({raw:.2f} s)")
    print(f"full dump        {args.rows / full.seconds:12,.0f} rows/s  ({full.seconds:.2f} s)")

    changed = args.rows // 100
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE core.tasks SET title = title || ' (edited)' WHERE id % 100 = 0")
        assert cur.rowcount == changed
    inc = engine.run_cycle(dsn, replica)
    assert inc.tables["tasks"]["copied"] == changed, inc.tables
    print(
        f"incremental      {changed / inc.seconds:12,.0f} rows/s  ({inc.seconds:.2f} s for "
        f"{changed:,} changed rows)"
    )
    report = engine.verify(dsn, replica)
    print(
        "verify after the cycles: "
        + ", ".join(f"{t} {'OK' if same else 'DIFFERENT'}" for t, _, _, same in report)
    )

    print(
        f"\nlag: 100 task writes/s for {args.lag_seconds:g} s, a cycle every "
        f"{args.interval:g} s ...",
        flush=True,
    )
    lags, n, errors = measure_lag(dsn, replica, args.lag_seconds, args.interval)
    if lags:
        lags.sort()
        print(
            f"writes {n:,}, replicated {len(lags):,}; lag p50 {statistics.median(lags):.2f} s, "
            f"p99 {lags[int(len(lags) * 0.99) - 1]:.2f} s, max {lags[-1]:.2f} s "
            f"(target: max <= interval + 1 = {args.interval + 1:g} s)"
        )
    if errors:
        print(f"cycle errors: {errors[:3]}")
    report = engine.verify(dsn, replica)
    print(
        "verify after the writes: "
        + ", ".join(f"{t} {m:,} rows {'OK' if same else 'DIFFERENT'}" for t, m, _, same in report)
    )

    print()
    print(f"{'figure':38} {'value':>8} {'target':>10}")
    print(f"{'full dump / raw pipe (speed)':38} {raw / full.seconds:8.2f} {'>= 0.5':>10}")
    print(
        f"{'incremental 1% / full dump (time)':38} {inc.seconds / full.seconds:8.3f} "
        f"{'<= 0.05':>10}"
    )
    if lags:
        print(f"{'max lag, s':38} {lags[-1]:8.2f} {'<= ' + str(args.interval + 1):>10}")


if __name__ == "__main__":
    main()
