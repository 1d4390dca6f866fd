"""The replicator's background duty and its bookkeeping on the master.

Every replication.interval_s a cycle runs for each replica, in a worker
thread (COPY needs a plain psycopg2 connection). The outcome is recorded in
core.replica_status; the first failure of an incident queues one alert to
the admins, the first success after it one recovery notice, both in the
same transaction as the status change.
"""

import asyncio
import functools
import json
import logging

from popug.common.duty import PeriodicDuty
from popug.common.web import public_url
from popug.notifier.queries import queue_admin_alert
from popug.replicator import engine

log = logging.getLogger(__name__)


def replicas_from_config(config):
    return [
        engine.Replica(name, spec["schema"], spec["dsn"], spec["tables"])
        for name, spec in config.replication.replicas.items()
    ]


async def record_success(db, config, result):
    tables = {t: {"rows": v["rows"], "copied": v["copied"]} for t, v in result.tables.items()}
    async with db.transaction() as cur:
        row = await lock_status(db, result.replica, cur)
        await db.run(
            "UPDATE core.replica_status SET version = %s, snapshot_at = %s,"
            " last_success_at = now(), incident_since = NULL,"
            " tables = tables || %s::jsonb WHERE name = %s",
            result.version,
            result.snapshot_at,
            json.dumps(tables),
            result.replica,
            cur=cur,
        )
        if row.incident_since is not None:
            await queue_admin_alert(
                db,
                config,
                "replication_recovered",
                f"Replication of {result.replica} works again",
                f"The replica {result.replica} is up to date again (version {result.version}).\n"
                f"It had been failing since {row.incident_since:%Y-%m-%d %H:%M:%S %Z}; the last "
                f"error was:\n\n{row.last_error}\n\n"
                f"Status: {public_url(config, 'replicator')}\n",
                cur=cur,
            )
            log.warning("replicator: %s recovered", result.replica)


async def record_failure(db, config, name, error):
    async with db.transaction() as cur:
        row = await lock_status(db, name, cur)
        await db.run(
            "UPDATE core.replica_status SET last_error = %s, last_error_at = now(),"
            " incident_since = coalesce(incident_since, now()) WHERE name = %s",
            error,
            name,
            cur=cur,
        )
        if row.incident_since is None:
            await queue_admin_alert(
                db,
                config,
                "replication_alert",
                f"Replication of {name} is failing",
                f"A replication cycle for the replica {name} failed:\n\n{error}\n\n"
                "The replicator keeps trying and repairs the replica with a full copy when "
                "it finds it damaged. You will get one more message when it works again.\n\n"
                f"Status: {public_url(config, 'replicator')}\n",
                cur=cur,
            )


async def lock_status(db, name, cur):
    await db.run(
        "INSERT INTO core.replica_status (name) VALUES (%s) ON CONFLICT (name) DO NOTHING",
        name,
        cur=cur,
    )
    return await db.fetch_one(
        "SELECT * FROM core.replica_status WHERE name = %s FOR UPDATE", name, cur=cur
    )


async def replica_statuses(db, config):
    """Per configured replica: version, lag in seconds, last success and error, tables."""
    rows = {
        r.name: r
        for r in await db.fetch_all(
            "SELECT *, extract(epoch FROM now() - snapshot_at)::float AS lag_s"
            " FROM core.replica_status"
        )
    }
    out = []
    for name, spec in config.replication.replicas.items():
        r = rows.get(name)
        out.append(
            {
                "name": name,
                "schema": spec["schema"],
                "separate_database": spec["dsn"] is not None,
                "version": r.version if r else 0,
                "lag_s": round(r.lag_s, 1) if r and r.lag_s is not None else None,
                "last_success_at": r.last_success_at if r else None,
                "last_error": r.last_error if r and r.incident_since else None,
                "last_error_at": r.last_error_at if r else None,
                "failing_since": r.incident_since if r else None,
                "tables": r.tables if r else {},
            }
        )
    return out


class Replicator(PeriodicDuty):
    """Runs a cycle for every replica each interval; one cycle at a time."""

    name = "replicator"
    service = "replicator"
    stop_timeout_s = 60  # a cycle under way finishes (or rolls back) first

    def __init__(self, config, db):
        super().__init__()
        self.config = config
        self.db = db
        self.replicas = replicas_from_config(config)

    def interval_s(self):
        return self.config.replication.interval_s

    async def run_once(self):
        outcome = await self.cycle_all()
        failing = [
            f"{name}: {r}" for name, r in outcome.items() if isinstance(r, str) and r != "busy"
        ]
        return "replication failing: " + "; ".join(failing) if failing else None

    async def cycle_all(self, full=()):
        """One cycle for every replica; returns {name: CycleResult or error text}."""
        loop = asyncio.get_running_loop()
        outcome = {}
        known = {r.name: r for r in await self.db.fetch_all("SELECT * FROM core.replica_status")}
        for replica in self.replicas:
            status = known.get(replica.name)
            cycle = functools.partial(
                engine.run_cycle,
                self.db.dsn,
                replica,
                full=replica.name in full,
                known_version=status.version if status else 0,
                # Damage found by a cycle is first reported; the cycles of the
                # open incident then repair it.
                repair=status is not None and status.incident_since is not None,
            )
            try:
                result = await loop.run_in_executor(None, cycle)
            except engine.Busy:
                outcome[replica.name] = "busy"
                continue
            except Exception as e:  # any failure of a cycle is an incident for the admins
                error = engine.describe(e)
                log.warning("replicator: %s: %s", replica.name, error)
                await record_failure(self.db, self.config, replica.name, error)
                outcome[replica.name] = error
                continue
            await record_success(self.db, self.config, result)
            outcome[replica.name] = result
        return outcome
