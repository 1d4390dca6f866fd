"""Database access: an aiopg pool, three small helpers and the migration runner.

Rows come back as attribute dicts. A transaction is one acquired connection:
`async with db.transaction() as cur:` runs everything inside BEGIN/COMMIT and
rolls back on any exception.
"""

import asyncio
import contextlib
import logging
import re
import weakref

import aiopg
import psycopg2

from popug import SQL_DIR
from popug.common.errors import NotFound, UserError

log = logging.getLogger(__name__)


class PoolBusy(UserError):
    """Every connection of the pool was in use for longer than the bounded wait."""

    def __init__(self, size, waited_s):
        super().__init__(
            503,
            f"The service is busy right now (all {size} database connections were in use "
            f"for {waited_s:g} s). Please try again in a moment.",
            headers={"Retry-After": "2"},
        )


class Row(dict):
    """A result row: row["title"] or row.title."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _rows(cur, rows):
    names = [d[0] for d in cur.description]
    return [Row(zip(names, r, strict=True)) for r in rows]


class Prepared:
    """A statement run often enough that parsing and planning it each time shows.

    Each pooled connection PREPAREs it on first use (server-side), then runs
    EXECUTE name(...). Written with %s parameters like any other statement.
    Only for single statements outside an explicit transaction.
    """

    def __init__(self, name, sql):
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"bad prepared statement name {name!r}")
        self.name = name
        self.sql = sql
        n = sql.count("%s")
        parts = sql.split("%s")
        self.prepare_sql = f"PREPARE {name} AS " + "".join(
            part + (f"${i + 1}" if i < n else "") for i, part in enumerate(parts)
        )
        self.execute_sql = f"EXECUTE {name}({', '.join(['%s'] * n)})" if n else f"EXECUTE {name}"


class Database:
    """The master database: one aiopg pool."""

    def __init__(self, pool):
        self.pool = pool
        # aiopg connection -> names it has prepared
        self._prepared = weakref.WeakKeyDictionary()

    async def _execute(self, cur, sql, params):
        if isinstance(sql, Prepared):
            done = self._prepared.setdefault(cur.connection, set())
            if sql.name not in done:
                try:
                    await cur.execute(sql.prepare_sql)
                except psycopg2.errors.DuplicatePreparedStatement:
                    pass
                done.add(sql.name)
            sql = sql.execute_sql
        await cur.execute(sql, params)

    # How long a request waits for a free connection before it is told to come
    # back later (503), instead of queueing without bound (database.acquire_timeout_s).
    acquire_timeout_s = 5

    @classmethod
    async def connect(cls, dsn, minsize=1, maxsize=10, timeout=30, acquire_timeout_s=5):
        # aiopg's default operation timeout is 60 s; ours comes from config.
        pool = await aiopg.create_pool(dsn, minsize=minsize, maxsize=maxsize, timeout=timeout)
        db = cls(pool)
        db.dsn = dsn  # for the work that needs a plain psycopg2 connection (COPY)
        db.acquire_timeout_s = acquire_timeout_s
        return db

    @contextlib.asynccontextmanager
    async def connection(self):
        """A pooled connection, waited for at most acquire_timeout_s (then PoolBusy, a 503).

        The connection goes back to the pool however the block ends; a client
        that disconnects meanwhile changes nothing (Tornado lets the handler
        finish), so no connection or open transaction is left behind.
        """
        if self.pool.freesize:
            # A free connection is handed over without waiting: no timer needed.
            conn = await self.pool.acquire()
        else:
            try:
                # asyncio.timeout, not wait_for: no extra task for every statement.
                async with asyncio.timeout(self.acquire_timeout_s):
                    conn = await self.pool.acquire()
            except TimeoutError:
                raise PoolBusy(self.pool.maxsize, self.acquire_timeout_s) from None
        try:
            yield conn
        finally:
            await self.pool.release(conn)

    async def close(self):
        self.pool.close()
        await self.pool.wait_closed()

    @contextlib.asynccontextmanager
    async def cursor(self):
        """A cursor on a connection of its own, in autocommit (one statement = one transaction)."""
        # `async with pool.cursor()` is broken in aiopg: acquire, then cursor.
        async with self.connection() as conn:
            async with conn.cursor() as cur:
                yield cur

    @contextlib.asynccontextmanager
    async def transaction(self):
        """A cursor inside BEGIN ... COMMIT on one connection; ROLLBACK on any exception."""
        async with self.connection() as conn:
            async with conn.cursor() as cur:
                async with cur.begin():
                    yield cur

    async def run(self, sql, *params, cur=None):
        """Execute a statement; returns the number of rows it touched."""
        if cur is not None:
            await self._execute(cur, sql, params)
            return cur.rowcount
        async with self.cursor() as c:
            await self._execute(c, sql, params)
            return c.rowcount

    async def fetch_all(self, sql, *params, cur=None):
        """All rows of a query, as a list of Row."""
        if cur is not None:
            await self._execute(cur, sql, params)
            return _rows(cur, await cur.fetchall())
        async with self.cursor() as c:
            await self._execute(c, sql, params)
            return _rows(c, await c.fetchall())

    async def fetch_one(self, sql, *params, cur=None, missing="Not found"):
        """Exactly one row; raises NotFound(missing) when there is none."""
        rows = await self.fetch_all(sql, *params, cur=cur)
        if not rows:
            raise NotFound(missing)
        if len(rows) > 1:
            raise RuntimeError(f"expected one row, got {len(rows)}: {str(sql)[:80]}")
        return rows[0]

    async def fetch_optional(self, sql, *params, cur=None):
        """The first row of a query, or None."""
        rows = await self.fetch_all(sql, *params, cur=cur)
        return rows[0] if rows else None


MIGRATION_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")

# One advisory lock key for "applying migrations", so two processes starting
# at once on an empty database do not race each other.
MIGRATION_LOCK = 7_200_000_001


def migration_files(sql_dir=SQL_DIR):
    files = sorted(p for p in sql_dir.iterdir() if MIGRATION_NAME.match(p.name))
    numbers = [int(MIGRATION_NAME.match(p.name).group(1)) for p in files]
    if len(set(numbers)) != len(numbers):
        raise RuntimeError(f"two migrations share a number in {sql_dir}")
    return files


def apply_migrations(dsn, sql_dir=SQL_DIR):
    """Apply every sql/NNN_*.sql not yet recorded, in order, each in its own transaction.

    Synchronous (psycopg2): it runs before the IOLoop starts and from the CLI.
    Returns the names applied.
    """
    applied = []
    conn = psycopg2.connect(dsn)
    try:
        with conn:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS public.schema_migrations ("
                    " name text PRIMARY KEY,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
        with conn.cursor() as cur:
            cur.execute("SELECT name FROM public.schema_migrations")
            done = {r[0] for r in cur.fetchall()}
        conn.commit()
        for path in migration_files(sql_dir):
            if path.name in done:
                continue
            with conn:
                with conn.cursor() as cur:
                    cur.execute(path.read_text(encoding="utf-8"))
                    cur.execute(
                        "INSERT INTO public.schema_migrations (name) VALUES (%s)", (path.name,)
                    )
            log.info("applied migration %s", path.name)
            applied.append(path.name)
    finally:
        with contextlib.suppress(psycopg2.Error):
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
            conn.commit()
        conn.close()
    return applied
