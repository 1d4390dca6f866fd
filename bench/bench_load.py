"""Load test: many clients against several tracker processes, then every invariant checked.

One PostgreSQL given by DSN to every process (the embedded server started
here, or UBERPOPUG_BENCH_DSN), as in production: --trackers tracker
processes on their own ports, and one process each of auth, accounting (the
end of day), replicator and notifier. --clients clients (managers creating
tasks and shuffling, workers listing and completing theirs) run for
--seconds, spread over the tracker processes; halfway, `popug close-day
--through <today>` closes the day early while the load goes on. Afterwards:

  - no 5xx but deliberate 503s (a busy pool answers 503 with Retry-After);
  - every process exits 0 on SIGTERM;
  - every assignment has exactly one fee: fees = tasks created + reassigned
    by the shuffles that answered, and each task's latest fee is its
    current assignee's;
  - every completed task exactly one reward, to its assignee, and no fee
    after its completion (never reassigned once done); open tasks none;
  - balances: the accounting replica's per-popug sums equal the master's;
  - `popug replicate --verify` says OK for every table.

Prints throughput and p50/p99 latency per operation. Not a test (tests/
test_load.py runs a short version and asserts the invariants, not timings).

    .venv/bin/python bench/bench_load.py [--clients 200] [--seconds 60] [--trackers 3]
"""

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_tracker import bench_database, free_port, wait_ready  # noqa: E402
from popug.common.config import load_config  # noqa: E402

POPUG = [sys.executable, str(REPO / "bin" / "popug")]
HOSTS = load_config(None, environ={}).hosts
PASSWORD = "load-password"


class System:
    """The services as separate processes on one database and one data folder."""

    def __init__(self, dsn, trackers, interval_s=2, **extra_env):
        self.dsn = dsn
        self.data = tempfile.mkdtemp(prefix="popug-load-var-")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("POPUG_")}
        self.env.update(
            POPUG_DATABASE__DSN=dsn,
            POPUG_DATA_DIR=self.data,
            POPUG_LOG_LEVEL="ERROR",  # the 409s of a busy day are warnings; errors only
            POPUG_AUTH__BCRYPT_COST="4",
            POPUG_REPLICATION__INTERVAL_S=str(interval_s),
            POPUG_ACCOUNTING__CLOSE_CHECK_S="2",
            POPUG_NOTIFIER__INTERVAL_S="1",
            POPUG_NOTIFIER__BATCH="500",
            **extra_env,
        )
        self.procs = []
        self.ports = {}
        self.tracker_ports = [self.start("tracker") for _ in range(trackers)]
        for service in ("auth", "accounting", "replicator", "notifier"):
            self.ports[service] = self.start(service)

    def start(self, service):
        port = free_port()
        proc = subprocess.Popen(POPUG + [f"--service={service}", "--port", str(port)], env=self.env)
        self.procs.append(proc)
        wait_ready(port, HOSTS[service])
        return port

    def command(self, *args):
        return subprocess.run(
            POPUG + list(args), env=self.env, capture_output=True, text=True, timeout=300
        )

    def stop(self):
        """SIGTERM every process; each must exit 0 (a clean stop)."""
        for p in self.procs:
            p.terminate()
        return [p.wait(timeout=120) for p in self.procs]


def seed_users(dsn, managers, workers):
    import bcrypt

    pw = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for role, n in (("manager", managers), ("worker", workers)):
            cur.execute(
                "INSERT INTO core.users (username, password_hash, role, email)"
                " SELECT %s || i, %s, %s, %s || i || '@load.test' FROM generate_series(1, %s) i",
                (role, pw, role, role, n),
            )


def seed_yesterday(dsn):
    """Every worker completed one task yesterday (+30.00), and the day before was
    closed: the accounting service closes yesterday and pays them during the load."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.closed_days (day, starts_at, ends_at, early, popugs_paid,"
            " total_paid, closed_by) SELECT d, d, d + 1, false, 0, 0, 'load test'"
            " FROM (SELECT (now() AT TIME ZONE 'UTC')::date - 2 AS d) x"
        )
        cur.execute(
            "WITH t AS (INSERT INTO core.tasks (title, assignee_id, assign_fee, reward,"
            "  created_by, status, created_at, assigned_at, completed_at)"
            "  SELECT 'yesterday', u.id, 10, 40, u.id, 'done', y, y, y + interval '1 hour'"
            "    FROM core.users u, (SELECT date_trunc('day', now() AT TIME ZONE 'UTC')"
            "      AT TIME ZONE 'UTC' - interval '12 hours' AS y) d"
            "   WHERE u.role = 'worker' RETURNING *)"
            " INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)"
            " SELECT assignee_id, id, 'fee', -assign_fee, created_at FROM t"
            " UNION ALL SELECT assignee_id, id, 'reward', reward, completed_at FROM t"
        )


class Client:
    """One keep-alive HTTP/1.1 connection to one port."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def request(self, method, host, path, token=None, body=None):
        payload = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(payload)}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(head.encode() + b"\r\n" + payload)
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError("closed")
                length, close = 0, False
                while True:
                    line = await self.reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    if name.lower() == b"connection" and value.strip().lower() == b"close":
                        close = True
                data = await self.reader.readexactly(length)
                if close:
                    self.close()
                return int(status_line.split()[1]), data
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def get_token(port, username):
    c = Client(port)
    status, data = await c.request(
        "POST", HOSTS["auth"], "/api/v1/tokens", body={"username": username, "password": PASSWORD}
    )
    c.close()
    assert status == 201, (status, data)
    return json.loads(data)["token"]


async def run_load(system, clients, seconds, managers, workers, close_at=None):
    """Returns (results per op: [(status, seconds)], tasks created, reassigned by shuffles)."""
    auth = system.ports["auth"]
    tokens = {}
    names = [f"manager{i}" for i in range(1, managers + 1)]
    names += [f"worker{i}" for i in range(1, workers + 1)]
    for name in names:
        tokens[name] = await get_token(auth, name)
    results = collections.defaultdict(list)
    counts = {"created": 0, "reassigned": 0}
    stop_at = time.perf_counter() + seconds
    tracker = HOSTS["tracker"]

    async def timed(op, client, method, path, token, body=None):
        t0 = time.perf_counter()
        status, data = await client.request(method, tracker, path, token, body)
        results[op].append((status, time.perf_counter() - t0))
        return status, data

    async def manager(i):
        rng = random.Random(i)
        client = Client(system.tracker_ports[i % len(system.tracker_ports)])
        token = tokens[f"manager{i % managers + 1}"]
        while time.perf_counter() < stop_at:
            if rng.random() < 0.005:  # a shuffle now and then: it charges every open task
                status, data = await timed(
                    "shuffle", client, "POST", "/api/v1/tasks/shuffle", token
                )
                if status == 200:
                    counts["reassigned"] += json.loads(data)["reassigned"]
            else:
                body = {"title": f"load task {i}-{rng.random():.6f}", "description": "load"}
                status, _ = await timed("create", client, "POST", "/api/v1/tasks", token, body)
                if status == 201:
                    counts["created"] += 1
        client.close()

    async def worker(i):
        rng = random.Random(1000 + i)
        client = Client(system.tracker_ports[i % len(system.tracker_ports)])
        token = tokens[f"worker{i % workers + 1}"]
        while time.perf_counter() < stop_at:
            status, data = await timed(
                "list", client, "GET", "/api/v1/tasks?assignee=me&status=open&limit=20", token
            )
            if status != 200:
                continue
            tasks = json.loads(data)["tasks"]
            if tasks and rng.random() < 0.7:
                t = rng.choice(tasks)
                await timed("complete", client, "POST", f"/api/v1/tasks/{t['id']}/complete", token)
        client.close()

    async def close_day_midway():
        await asyncio.sleep(close_at)
        today = dt.datetime.now(dt.UTC).date()
        r = await asyncio.to_thread(system.command, "close-day", "--through", str(today))
        print(f"  close-day during the load: {r.stdout.strip() or r.stderr.strip()}", flush=True)

    n_managers = max(1, clients // 4)
    jobs = [manager(i) for i in range(n_managers)]
    jobs += [worker(i) for i in range(clients - n_managers)]
    if close_at is not None:
        jobs.append(close_day_midway())
    t0 = time.perf_counter()
    await asyncio.gather(*jobs)
    return results, counts, time.perf_counter() - t0


INVARIANTS = {
    "tasks whose latest fee is not their current assignee's": """
        SELECT count(*) FROM core.tasks t
         WHERE t.assignee_id IS DISTINCT FROM (
             SELECT user_id FROM core.ledger l WHERE l.task_id = t.id AND l.kind = 'fee'
              ORDER BY l.id DESC LIMIT 1)""",
    "fees of another amount than their task's fee": """
        SELECT count(*) FROM core.ledger l JOIN core.tasks t ON t.id = l.task_id
         WHERE l.kind = 'fee' AND l.amount <> -t.assign_fee""",
    "completed tasks without exactly one reward": """
        SELECT count(*) FROM core.tasks t
         WHERE t.status = 'done' AND (SELECT count(*) FROM core.ledger l
                                       WHERE l.task_id = t.id AND l.kind = 'reward') <> 1""",
    "open tasks with a reward": """
        SELECT count(*) FROM core.ledger l JOIN core.tasks t ON t.id = l.task_id
         WHERE l.kind = 'reward' AND t.status = 'open'""",
    "rewards to someone other than the assignee, or of another amount": """
        SELECT count(*) FROM core.ledger l JOIN core.tasks t ON t.id = l.task_id
         WHERE l.kind = 'reward' AND (l.user_id <> t.assignee_id OR l.amount <> t.reward)""",
    "fees charged after the task was completed (reassigned once done)": """
        SELECT count(*) FROM core.ledger l JOIN core.tasks t ON t.id = l.task_id
         WHERE l.kind = 'fee' AND t.completed_at IS NOT NULL AND l.id > (
             SELECT id FROM core.ledger r WHERE r.task_id = t.id AND r.kind = 'reward')""",
    "popugs paid twice for one day": """
        SELECT count(*) FROM (SELECT user_id, day FROM core.ledger WHERE kind = 'payout'
                               GROUP BY 1, 2 HAVING count(*) > 1) d""",
    "popugs whose replica balance differs from the master's": """
        SELECT count(*) FROM (
            SELECT user_id, sum(amount) AS b FROM core.ledger GROUP BY user_id) m
          FULL JOIN (
            SELECT user_id, sum(amount) AS b FROM accounting.ledger GROUP BY user_id) r
            USING (user_id)
         WHERE m.b IS DISTINCT FROM r.b""",
}


def check_invariants(system, counts, workers):
    """[(what, found)] for every invariant; found must be 0."""
    verify = system.command("replicate", "--verify")
    out = []
    with psycopg2.connect(system.dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM core.ledger WHERE kind = 'payout' AND amount = -30"
            " AND day = (now() AT TIME ZONE 'UTC')::date - 1"
        )
        out.append(
            ("workers not paid yesterday's 30.00 during the load", workers - cur.fetchone()[0])
        )
        # The load's own tasks (not yesterday's, seeded).
        cur.execute("SELECT count(*) FROM core.tasks WHERE title <> 'yesterday'")
        tasks = cur.fetchone()[0]
        cur.execute(
            "SELECT count(*) FROM core.ledger l JOIN core.tasks t ON t.id = l.task_id"
            " WHERE l.kind = 'fee' AND t.title <> 'yesterday'"
        )
        fees = cur.fetchone()[0]
        out.append(("tasks created = tasks answered 201", tasks - counts["created"]))
        out.append(
            ("fees = tasks created + reassigned by shuffles", fees - tasks - counts["reassigned"])
        )
        for what, sql in INVARIANTS.items():
            cur.execute(sql)
            out.append((what, cur.fetchone()[0]))
    different = verify.returncode != 0 or "DIFFERENT" in verify.stdout
    out.append(("replicate --verify: tables not OK", 1 if different else 0))
    return out, verify.stdout


def report(results, elapsed):
    print(f"\n{'operation':10} {'requests':>9} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}  statuses")
    for op in ("create", "list", "complete", "shuffle"):
        rows = results.get(op, [])
        if not rows:
            continue
        lat = sorted(t for _, t in rows)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        statuses = dict(sorted(collections.Counter(s for s, _ in rows).items()))
        print(
            f"{op:10} {len(rows):9} {len(rows) / elapsed:8.1f} "
            f"{statistics.median(lat) * 1000:8.1f} {p99 * 1000:8.1f}  {statuses}"
        )


def unexpected_5xx(results):
    return sum(1 for rows in results.values() for s, _ in rows if s >= 500 and s != 503)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--trackers", type=int, default=3)
    p.add_argument("--workers", type=int, default=50)
    p.add_argument("--managers", type=int, default=5)
    args = p.parse_args()
    dsn = bench_database("popug_load")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE core.ledger, core.outbox, core.tasks, core.sessions, core.sso_codes,"
            " core.closed_days, core.replica_status, core.login_failures, core.users"
            " RESTART IDENTITY CASCADE"
        )
        cur.execute("DROP SCHEMA IF EXISTS accounting CASCADE")
        cur.execute("DROP SCHEMA IF EXISTS analytics CASCADE")
    seed_users(dsn, args.managers, args.workers)
    system = System(dsn, args.trackers)
    seed_yesterday(dsn)
    print(
        f"{args.clients} clients for {args.seconds:g} s on {args.trackers} tracker processes "
        f"(ports {system.tracker_ports}), with auth, accounting, replicator and notifier",
        flush=True,
    )
    try:
        results, counts, elapsed = asyncio.run(
            run_load(
                system, args.clients, args.seconds, args.managers, args.workers, args.seconds / 2
            )
        )
        report(results, elapsed)
        time.sleep(3)  # the replicator's next cycle
        found, verify = check_invariants(system, counts, args.workers)
    finally:
        codes = system.stop()
    print(f"\n5xx other than 503: {unexpected_5xx(results)}")
    for what, n in found:
        print(f"{'OK ' if n == 0 else 'BAD'} {what}: {n}")
    print(f"exit codes after SIGTERM: {codes}")
    print(verify)


if __name__ == "__main__":
    main()
