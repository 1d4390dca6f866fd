"""The copy itself: master -> replica with COPY, on plain psycopg2 connections.

aiopg's asynchronous connections cannot run COPY, so this module is
synchronous and the service runs it in a worker thread.

How no committed row is ever missed: every replicated master row carries rv,
the xid8 of the transaction that last wrote it (sql/004). A cycle runs in one
REPEATABLE READ transaction on the master, whose snapshot S it stores in the
replica along with the data. The next cycle copies the rows whose rv S did
not see: NOT pg_visible_in_snapshot(rv, S). A writer that took its xid before
the copy but committed after it was "in progress" in S, so its rows are
copied next time; a writer still running during the next cycle is invisible
to that cycle's snapshot too and waits one more. Rows are never missed, only
copied again, and the upsert makes a repeat harmless. The index on rv with
rv >= pg_snapshot_xmin(S) keeps this to the rows that changed.

Consistency: all tables of a cycle are read in that one master snapshot and
written in one replica transaction, so a reader of the replica sees the old
state or the new one, never half; a cycle that fails rolls back and leaves
the replica as it was. A full dump deletes and reloads inside the same
transaction (no TRUNCATE: readers never wait on it).
"""

import logging
import tempfile
import time
from dataclasses import dataclass, field

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import ISOLATION_LEVEL_REPEATABLE_READ

log = logging.getLogger(__name__)

# Only one cycle at a time, whatever the number of replicator processes.
CYCLE_LOCK = 7_200_000_201

STATE_TABLE = "_replica_state"

# Indexes the readers of a replica need (the replica tables are the
# replicator's: a repair drops and recreates them, so it makes these too).
# Each is made when every column it names (in the key or the WHERE clause)
# is in the replica's column list.
# table -> [(index name, columns, WHERE clause or None, columns of the WHERE clause)]
REPLICA_INDEXES = {
    "ledger": [
        # An account's audit log and balance.
        ("ledger_user_time_idx", ("user_id", "created_at"), None, ()),
        # The per-day figures: every entry of a range of days.
        ("ledger_time_idx", ("created_at",), None, ()),
        # The payouts that closed a range of days.
        ("ledger_payout_day_idx", ("day", "user_id"), "kind = 'payout'", ("kind",)),
    ],
    "tasks": [
        # The most expensive completed task of each day, week or month.
        ("tasks_done_time_idx", ("completed_at", "reward"), "status = 'done'", ("status",)),
    ],
}
SPOOL_BYTES = 64 * 1024 * 1024  # COPY data beyond this spills to a temporary file


@dataclass
class Replica:
    name: str
    schema: str
    dsn: str | None  # None: the master database itself
    tables: dict  # table -> [columns]; "id" first


@dataclass
class CycleResult:
    replica: str
    version: int
    snapshot_at: object
    full: bool
    tables: dict = field(default_factory=dict)  # table -> {"rows", "copied", "full"}
    seconds: float = 0.0


class Busy(Exception):
    """Another replicator is running a cycle right now."""


class ReplicaDamaged(Exception):
    """The replica lost tables or its state since the last cycle; a full copy repairs it."""


# A replica that does not answer must fail its cycle (and raise an alert), not
# hang it: bounded connect, dead-peer detection, and bounded waits for locks
# (a repair's DROP TABLE queues readers behind it only this long).
CONNECT_OPTIONS = dict(
    connect_timeout=10,
    keepalives=1,
    keepalives_idle=10,
    keepalives_interval=5,
    keepalives_count=3,
    options="-c lock_timeout=3000 -c statement_timeout=600000 -c TimeZone=UTC",
)


def connect(dsn):
    # TimeZone UTC: one text form of times on both sides (checksums compare text).
    return psycopg2.connect(dsn, **CONNECT_OPTIONS)


def take_cycle_lock(master_dsn, wait):
    """The cross-process "one cycle at a time" lock, on a connection of its own.

    Taken before the cycle's snapshot, so a cycle that waited for it still
    reads the newest data. Closing the connection releases it (even if the
    process dies). Raises Busy when not waiting and another cycle runs.
    """
    lock = connect(master_dsn)
    lock.autocommit = True
    with lock.cursor() as cur:
        if wait:
            cur.execute("SET statement_timeout = '120s'")
            cur.execute("SELECT pg_advisory_lock(%s)", (CYCLE_LOCK,))
        else:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (CYCLE_LOCK,))
            if not cur.fetchone()[0]:
                lock.close()
                raise Busy("another replicator is running a cycle")
    return lock


def master_columns(cur, table):
    """{column: type} of core.<table>."""
    return dict(table_columns(cur, "core", table))


def replica_has_primary_key(cur, schema, table):
    cur.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_attribute a"
        "    ON a.attrelid = c.oid AND a.attnum = i.indkey[0]"
        " WHERE n.nspname = %s AND c.relname = %s AND i.indisprimary AND i.indnatts = 1"
        "   AND a.attname = 'id')",
        (schema, table),
    )
    return cur.fetchone()[0]


def replica_intact(cur, schema, table, expected):
    """Same columns and types as the master's, and the primary key the upserts need."""
    return table_columns(cur, schema, table) == expected and replica_has_primary_key(
        cur, schema, table
    )


def table_columns(cur, schema, table):
    """[(column, type)] of schema.table in column order; [] when it does not exist."""
    cur.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod)"
        "  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped"
        " ORDER BY a.attnum",
        (schema, table),
    )
    return list(cur.fetchall())


def _ident_list(cols):
    return sql.SQL(", ").join(sql.Identifier(c) for c in cols)


def pipe(master_cur, copy_out, replica_cur, copy_in):
    """COPY ... TO STDOUT on the master into COPY ... FROM STDIN on the replica, byte for byte."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as buf:
        master_cur.copy_expert(copy_out, buf)
        buf.seek(0)
        replica_cur.copy_expert(copy_in, buf)
    return replica_cur.rowcount


def ensure_state_table(rc, schema):
    rc.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    rc.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {}.{} ("
            " table_name text PRIMARY KEY, version bigint NOT NULL, snapshot text NOT NULL,"
            " snapshot_at timestamptz NOT NULL, rows bigint NOT NULL,"
            " copied_at timestamptz NOT NULL, shape text)"
        ).format(sql.Identifier(schema), sql.Identifier(STATE_TABLE))
    )
    # State tables made before `shape` existed get it (NULL: shape unknown).
    rc.execute(
        sql.SQL("ALTER TABLE {}.{} ADD COLUMN IF NOT EXISTS shape text").format(
            sql.Identifier(schema), sql.Identifier(STATE_TABLE)
        )
    )


def shape_of(expected):
    """The configured columns and types of a replica table, as one comparable text."""
    return ", ".join(f"{c} {t}" for c, t in expected)


def ensure_replica_indexes(rc, schema, table, cols):
    """Make the REPLICA_INDEXES of this table that are missing; returns their names."""
    wanted = [
        (name, columns, where)
        for name, columns, where, where_cols in REPLICA_INDEXES.get(table, [])
        if all(c in cols for c in columns + where_cols)
    ]
    if not wanted:
        return []
    rc.execute("SELECT indexname FROM pg_indexes WHERE schemaname = %s", (schema,))
    have = {r[0] for r in rc.fetchall()}
    made = []
    for name, columns, where in wanted:
        if name in have:
            continue
        rc.execute(
            sql.SQL("CREATE INDEX {} ON {} ({}){}").format(
                sql.Identifier(name),
                sql.Identifier(schema, table),
                _ident_list(columns),
                sql.SQL(f" WHERE {where}") if where else sql.SQL(""),
            )
        )
        made.append(name)
    return made


def read_state(rc, schema):
    rc.execute(
        sql.SQL("SELECT table_name, version, snapshot, rows, shape FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(STATE_TABLE)
        )
    )
    return {
        t: {"version": v, "snapshot": s, "rows": n, "shape": shape}
        for t, v, s, n, shape in rc.fetchall()
    }


def create_replica_table(rc, schema, table, cols, types):
    target = sql.Identifier(schema, table)
    rc.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
    # Room on every page, so the upserts of later cycles are HOT updates
    # (no new index entries) for rows whose id did not move.
    rc.execute(
        sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY (id)) WITH (fillfactor = 85)").format(
            target,
            sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(types[c])) for c in cols
            ),
        )
    )


def copy_full(mc, rc, schema, table, cols, types, shape_ok):
    """Replace the replica's table with the master's rows (create or repair it first).

    shape_ok: replica_intact() of the table, as the cycle found it.
    """
    if not shape_ok:
        create_replica_table(rc, schema, table, cols, types)
    else:
        rc.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(schema, table)))
    out = sql.SQL("COPY (SELECT {} FROM core.{} ORDER BY id) TO STDOUT (FORMAT binary)").format(
        _ident_list(cols), sql.Identifier(table)
    )
    inn = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(
        sql.Identifier(schema, table), _ident_list(cols)
    )
    n = pipe(mc, out.as_string(mc), rc, inn.as_string(rc))
    return n, n


def copy_changes(mc, rc, schema, table, cols, prev_snapshot, rows_before):
    """Upsert the rows written by transactions the previous snapshot did not see."""
    changed = sql.SQL(
        "FROM core.{} WHERE rv >= pg_snapshot_xmin({}::pg_snapshot)"
        " AND NOT pg_visible_in_snapshot(rv, {}::pg_snapshot)"
    ).format(sql.Identifier(table), sql.Literal(prev_snapshot), sql.Literal(prev_snapshot))
    stage = sql.Identifier(f"_stage_{table}")
    rc.execute(
        sql.SQL("CREATE TEMP TABLE {} (LIKE {}) ON COMMIT DROP").format(
            stage, sql.Identifier(schema, table)
        )
    )
    out = sql.SQL("COPY (SELECT {} {}) TO STDOUT (FORMAT binary)").format(
        _ident_list(cols), changed
    )
    inn = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(stage, _ident_list(cols))
    copied = pipe(mc, out.as_string(mc), rc, inn.as_string(rc))
    if copied == 0:
        return 0, rows_before  # this table did not move: nothing to upsert
    updates = sql.SQL(", ").join(
        sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
        for c in cols
        if c != "id"
    )
    rc.execute(
        sql.SQL(
            "WITH up AS (INSERT INTO {} ({}) SELECT {} FROM {}"
            " ON CONFLICT (id) DO UPDATE SET {} RETURNING (xmax = 0) AS inserted)"
            " SELECT count(*) FILTER (WHERE inserted) FROM up"
        ).format(
            sql.Identifier(schema, table), _ident_list(cols), _ident_list(cols), stage, updates
        )
    )
    inserted = rc.fetchone()[0]
    return copied, rows_before + inserted


def run_cycle(
    master_dsn,
    replica,
    full=False,
    master=None,
    after_copy=None,
    known_version=0,
    repair=True,
    wait=False,
):
    """Bring one replica to a new master snapshot. Raises Busy when another cycle runs.

    `known_version`: the version the master last recorded for this replica.
    A replica found without its tables or state although it had reached a
    version is damaged (someone dropped it): with repair=False that is raised
    as ReplicaDamaged, so the admins hear of it; with repair=True the damaged
    tables get a full copy.
    `master`: an open REPEATABLE READ connection to reuse (verify compares in
    the same snapshot afterwards). `after_copy(rc)` runs in the replica's
    transaction before it commits. `wait`: wait for a running cycle to end.
    """
    started = time.monotonic()
    lock = take_cycle_lock(master_dsn, wait)
    own_master = master is None
    try:
        m = master or connect(master_dsn)
        r = connect(replica.dsn) if replica.dsn else connect(master_dsn)
    except BaseException:
        lock.close()
        raise
    try:
        if own_master:
            m.set_session(isolation_level=ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
        with m.cursor() as mc, r.cursor() as rc:
            # The first statement fixes the snapshot every COPY of this cycle reads.
            mc.execute("SELECT pg_current_snapshot()::text, now()")
            snapshot, snapshot_at = mc.fetchone()
            ensure_state_table(rc, replica.schema)
            state = read_state(rc, replica.schema)
            # Versions only go forward, even when the replica lost its state.
            version = max([known_version] + [s["version"] for s in state.values()]) + 1
            result = CycleResult(replica.name, version, snapshot_at, full)
            moved = False
            for table, cols in replica.tables.items():
                types = master_columns(mc, table)
                prev = state.get(table)
                expected = [(c, types[c]) for c in cols]
                shape = shape_of(expected)
                shape_ok = replica_intact(rc, replica.schema, table, expected)
                intact = prev is not None and shape_ok
                # Not damage but a planned change: a table or columns added to
                # the replica's configuration (or by an upgrade) since the
                # state was written. Its full copy needs no alarm.
                reshaped = (prev is None and state) or (prev is not None and prev["shape"] != shape)
                if not intact and known_version > 0 and not repair and not full and not reshaped:
                    raise ReplicaDamaged(
                        f"replica {replica.name}: table {replica.schema}.{table} is missing or "
                        "damaged (dropped or altered by hand); the next cycle repairs it with a "
                        "full copy"
                    )
                if full or not intact:
                    copied, rows = copy_full(mc, rc, replica.schema, table, cols, types, shape_ok)
                    table_full = True
                else:
                    copied, rows = copy_changes(
                        mc, rc, replica.schema, table, cols, prev["snapshot"], prev["rows"]
                    )
                    table_full = False
                ensure_replica_indexes(rc, replica.schema, table, cols)
                changed = copied > 0 or table_full
                moved = moved or changed
                result.tables[table] = {"rows": rows, "copied": copied, "full": table_full}
                rc.execute(
                    sql.SQL(
                        "INSERT INTO {}.{} AS s (table_name, version, snapshot, snapshot_at, rows,"
                        " copied_at, shape) VALUES (%s, %s, %s, %s, %s, now(), %s)"
                        " ON CONFLICT (table_name) DO UPDATE SET snapshot = EXCLUDED.snapshot,"
                        " snapshot_at = EXCLUDED.snapshot_at, rows = EXCLUDED.rows,"
                        " shape = EXCLUDED.shape,"
                        " version = CASE WHEN %s THEN EXCLUDED.version ELSE s.version END,"
                        " copied_at = CASE WHEN %s THEN now() ELSE s.copied_at END"
                    ).format(sql.Identifier(replica.schema), sql.Identifier(STATE_TABLE)),
                    (
                        table,
                        version,
                        snapshot,
                        snapshot_at,
                        rows,
                        shape,
                        changed,
                        changed,
                    ),
                )
            if not moved:
                result.version = version - 1
            if after_copy:
                after_copy(rc)
        r.commit()
        result.full = any(t["full"] for t in result.tables.values())
        result.seconds = time.monotonic() - started
        return result
    except BaseException:
        r.rollback()
        raise
    finally:
        r.close()
        if own_master:
            m.rollback()
            m.close()
        lock.close()


def checksum_sql(schema, table, cols):
    return sql.SQL(
        "SELECT count(*), coalesce(md5(string_agg(md5(ROW({})::text), ',' ORDER BY id)), '')"
        " FROM {}.{}"
    ).format(_ident_list(cols), sql.Identifier(schema), sql.Identifier(table))


def verify(master_dsn, replica):
    """Bring the replica up to date, then compare every table with the master, in one snapshot.

    Returns [(table, master_rows, replica_rows, same)]. A row changed by hand
    in the replica (or lost there) is not something the incremental cycle
    touches, so it shows as a difference.
    """
    m = connect(master_dsn)
    m.set_session(isolation_level=ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    report = []

    def compare(rc):
        with m.cursor() as mc:
            for table, cols in replica.tables.items():
                mc.execute(checksum_sql("core", table, cols))
                m_rows, m_sum = mc.fetchone()
                rc.execute(checksum_sql(replica.schema, table, cols))
                r_rows, r_sum = rc.fetchone()
                report.append((table, m_rows, r_rows, m_rows == r_rows and m_sum == r_sum))

    try:
        run_cycle(master_dsn, replica, master=m, after_copy=compare, wait=True)
    finally:
        m.rollback()
        m.close()
    return report


def describe(exc):
    """One line for an admin: what went wrong in a cycle."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:500]
