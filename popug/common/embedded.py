"""The embedded PostgreSQL: a real server in <data-dir>/pgdata, from the pgserver package.

pgserver counts the processes using a server in pgdata/.handle_pids.json and
stops the server when the last one exits (through atexit). It never drops the
pid of a process that died without running atexit (SIGKILL, or SIGTERM with
no handler), so the server would never be stopped again; we prune dead pids
before every attach. bin/popug turns SIGTERM into a clean exit for the same reason.
"""

import json
import logging
import os
import warnings
from pathlib import Path

import psycopg2
from psycopg2 import sql

log = logging.getLogger(__name__)


def _prune_dead_handles(pgdata):
    import psutil

    path = Path(pgdata) / ".handle_pids.json"
    if not path.exists():
        return
    try:
        pids = json.loads(path.read_text())
    except (OSError, ValueError):
        pids = []
    alive = [p for p in pids if isinstance(p, int) and psutil.pid_exists(p) and p != os.getpid()]
    if alive != pids:
        log.info("embedded postgres: dropping dead users %s", sorted(set(pids) - set(alive)))
        path.write_text(json.dumps(alive))


def start_embedded(data_dir, dbname):
    """Start (or join) the server in <data_dir>/pgdata; create `dbname`; return its DSN.

    The server stops when the last process that joined it exits.
    """
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root, systemd
            # services) and falls back to /tmp/runtime-<uid>, which is fine.
            warnings.simplefilter("ignore")
            import pgserver
            from pgserver.postgres_server import PostgresServer
    except ImportError as e:  # pragma: no cover - pgserver is an install requirement
        raise RuntimeError(
            "no database configured and the embedded server is not installed: "
            "pip install pgserver, or set database.dsn"
        ) from e

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (data_dir / "pgdata").resolve()
    # get_server makes pgdata with exist_ok=False after its own exists() check,
    # so two processes starting at once on an empty folder race there: make it
    # here (initdb is still run once, under pgserver's inter-process lock).
    pgdata.mkdir(exist_ok=True)
    with PostgresServer._lock:
        _prune_dead_handles(pgdata)
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    base_uri = server.get_uri()
    conn = psycopg2.connect(base_uri)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if cur.fetchone() is None:
                try:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                except (psycopg2.errors.DuplicateDatabase, psycopg2.errors.UniqueViolation):
                    pass  # another process created it a moment ago
    finally:
        conn.close()
    return server.get_uri(database=dbname)


def psql_binary():
    """The psql to use for dbshell: the embedded server's own, else the machine's."""
    try:
        from pgserver._commands import POSTGRES_BIN_PATH

        candidate = POSTGRES_BIN_PATH / "psql"
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    return "psql"
