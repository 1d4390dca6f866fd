"""bin/popug: run the services, and the few commands a sysadmin needs.

popug [--service=all|landing|auth|tracker|...] [--port N] [--config FILE] [--data-dir DIR]
popug migrate | create-user NAME --role R --email E | dbshell
"""

import argparse
import asyncio
import getpass
import logging
import os
import signal
import subprocess
import sys

from popug import SERVICES
from popug.common.config import ConfigError, default_config_path, ensure_secret_file, load_config

log = logging.getLogger("popug")

EPILOG = """commands:
  serve (default)   run the services (all in one process, or the one --service names)
  migrate           apply the sql/ migrations not yet applied, then exit
  create-user NAME  create a user; the password is read from a prompt, or from stdin
  set-password NAME reset a user's password (prompt or stdin); their sessions end
  replicate         one replication cycle now (--full REPLICA: a full copy; --verify: compare)
  close-day         close the ended business days: pay out positive balances (--through DAY)
  dbshell           psql on the database in use (SQL from stdin when it is not a terminal)

Environment: POPUG_<KEY> overrides a config key, POPUG_<SECTION>__<KEY> a nested one
(POPUG_SERVER__PORT=9000, POPUG_DATABASE__DSN=postgresql://..., POPUG_DATA_DIR=/srv/popug).
"""


def add_common_options(p, defaults):
    """The options every command takes, before or after the command's name."""

    def default(value):
        return value if defaults else argparse.SUPPRESS

    p.add_argument(
        "--service",
        default=default("all"),
        choices=("all",) + SERVICES,
        help="which service to run in this process (default: all)",
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default=default(None),
        help="YAML config file (default: config/popug.yaml of the checkout)",
    )
    p.add_argument(
        "--port",
        type=int,
        metavar="N",
        default=default(None),
        help="port to listen on (server.port)",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=default(None),
        help="folder for the embedded database, secrets and mail (data_dir)",
    )


def build_parser():
    p = argparse.ArgumentParser(
        prog="popug",
        description="UberPopug: task tracker, accounting and analytics on their own subdomains.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_common_options(p, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, defaults=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def command(name, help):
        return sub.add_parser(name, help=help, parents=[common])

    command("serve", "run the services (default)")
    command("migrate", "apply pending migrations and exit")
    cu = command("create-user", "create a user (password from prompt or stdin)")
    cu.add_argument("username")
    cu.add_argument("--role", default="worker", help="admin, manager, accountant, worker (default)")
    cu.add_argument("--email", required=True)
    sp = command("set-password", "reset a user's password (from prompt or stdin)")
    sp.add_argument("username")
    command("dbshell", "open psql on the database in use")
    rp = command("replicate", "run one replication cycle now, or verify the replicas")
    rp.add_argument(
        "--full",
        metavar="REPLICA",
        action="append",
        default=[],
        help="copy this replica in full (repairs it); may repeat",
    )
    rp.add_argument(
        "--verify",
        action="store_true",
        help="bring every replica up to date, then compare each table with the "
        "master (rows and checksum); exit 1 on a difference",
    )
    cd = command(
        "close-day",
        "close the ended business days now: pay out every positive balance, once per day "
        "(give it the server's --port or config, for the links in the payout emails)",
    )
    cd.add_argument(
        "--through",
        metavar="YYYY-MM-DD",
        help="close every open day up to this one (default: the last ended day); "
        "today closes the current day early",
    )
    return p


def exit_cleanly_on_sigterm():
    # Without a handler SIGTERM kills the process without running atexit, and
    # the embedded server's handle count never drops: exit through Python.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


class NoDatabaseHere(Exception):
    pass


def database_dsn(config, create=True):
    """The configured DSN, or the embedded server's (started or joined).

    With create=False (admin commands) an embedded database must already
    exist: a typo in --data-dir, or a forgotten DSN, must not quietly create a
    second, empty company.
    """
    if config.database.dsn:
        return config.database.dsn
    from popug.common.embedded import start_embedded

    pgdata = os.path.join(config.data_dir, "pgdata")
    if not create and not os.path.exists(os.path.join(pgdata, "PG_VERSION")):
        raise NoDatabaseHere(
            f"no database here: {pgdata} does not exist and database.dsn is not set. "
            "Pass the --data-dir (or POPUG_DATABASE__DSN) your services use, "
            "or start popug once to create it."
        )

    log.info(
        "no database.dsn configured: using the embedded PostgreSQL in %s/pgdata", config.data_dir
    )
    return start_embedded(config.data_dir, config.database.name)


def cookie_secret(config):
    return config.server.cookie_secret or ensure_secret_file(
        os.path.join(config.data_dir, "cookie-secret")
    )


def prepare_database(config, serving=True):
    """Migrate; on the first start of a server on an empty database, create the admin."""
    from popug.auth.queries import ensure_initial_admin
    from popug.common.db import apply_migrations
    from popug.common.web import public_url

    dsn = database_dsn(config, create=serving)
    apply_migrations(dsn)
    if not serving:
        return dsn
    password = ensure_initial_admin(dsn, config.auth.bcrypt_cost, config.data_dir)
    if password:
        path = os.path.join(config.data_dir, "initial-admin-password")
        banner = (
            f"\n  First start on an empty database: created user 'admin'\n"
            f"  password: {password}\n"
            f"  (also in {path}, mode 0600;\n"
            f"   change it after logging in, at {public_url(config, 'auth', '/password')})\n"
        )
        print(banner, flush=True)
    return dsn


def cmd_serve(args, config):
    import tornado.httpserver
    import tornado.ioloop

    from popug.common.app import make_app
    from popug.common.db import Database

    services = "all" if args.service == "all" else [args.service]
    dsn = prepare_database(config)
    secret = cookie_secret(config)

    async def start():
        db = await Database.connect(
            dsn,
            config.database.pool_min,
            config.database.pool_max,
            config.database.timeout_s,
            config.database.acquire_timeout_s,
        )
        app = make_app(config, db, services, cookie_secret=secret)
        # 1 MB is far above any form or JSON body here; bigger ones are refused
        # before anyone parses them.
        server = tornado.httpserver.HTTPServer(
            app, xheaders=config.server.xheaders, max_body_size=1024 * 1024
        )
        try:
            server.listen(config.server.port, address=config.server.address)
        except OSError:
            await db.close()
            raise
        return db, server, app

    loop = tornado.ioloop.IOLoop.current()
    try:
        db, server, app = loop.run_sync(start)
        duties = background_duties(config, db, services)
        app.settings["popug_duties"] = duties  # for /healthz and /metrics
    except OSError as e:
        print(
            f"popug: cannot listen on {config.server.address}:{config.server.port}: {e.strerror}",
            file=sys.stderr,
        )
        return 1
    port = config.server.port
    shown = SERVICES if services == "all" else services
    for name in shown:
        log.info("%-10s http://%s:%s/", name, config.hosts[name], port)
    if services == "all":
        print(
            f"UberPopug is running: open http://{config.hosts['landing']}:{port}/ (Ctrl-C to stop)",
            flush=True,
        )
    else:
        print(
            f"UberPopug {args.service} is running on {config.server.address}:{port}, serving "
            f"{config.hosts[args.service]} only; the other services run in their own "
            "processes behind your proxy. (Ctrl-C to stop)",
            flush=True,
        )

    stopping = []

    async def shutdown():
        from popug.common.web import IN_FLIGHT, wait_for_requests

        server.stop()  # no new connections
        for duty in duties:
            await duty.stop()
        if not await wait_for_requests(10):
            log.warning("%d requests still running after 10 s; closing anyway", len(IN_FLIGHT))
        try:
            await asyncio.wait_for(server.close_all_connections(), timeout=10)
        except TimeoutError:
            log.warning("some connections did not close within 10 s")
        await db.close()
        loop.stop()

    def on_signal(signum, frame):
        if stopping:
            return
        stopping.append(signum)
        log.info("received %s: stopping", signal.Signals(signum).name)
        loop.add_callback_from_signal(shutdown)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loop.start()
    log.info("stopped")
    return 0


def background_duties(config, db, services):
    """Start the periodic jobs of the services this process runs (notifier delivery, ...)."""
    import importlib

    names = SERVICES if services == "all" else services
    duties = []
    for name in names:
        module = importlib.import_module(f"popug.{name}")
        make = getattr(module, "background", None)
        if make is not None:
            duty = make(config, db)
            duty.start()
            duties.append(duty)
    return duties


def cmd_migrate(args, config):
    from popug.common.db import apply_migrations

    applied = apply_migrations(database_dsn(config, create=False))
    print("applied: " + ", ".join(applied) if applied else "nothing to apply: up to date")
    return 0


def read_password():
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            print("popug: the passwords do not match", file=sys.stderr)
            return None
        return first
    line = sys.stdin.readline()
    if not line:
        print("popug: no password given on stdin", file=sys.stderr)
        return None
    return line.rstrip("\r\n")


def run_with_database(config, action):
    """Run `await action(db)` once on a small pool; a UserError is one line on stderr, exit 1.

    Returns (exit status, what action returned).
    """
    from popug.common.db import Database
    from popug.common.errors import UserError

    dsn = prepare_database(config, serving=False)

    async def run():
        db = await Database.connect(dsn, 1, 2, config.database.timeout_s)
        try:
            return await action(db)
        finally:
            await db.close()

    try:
        return 0, asyncio.run(run())
    except UserError as e:
        print(f"popug: {e.message}", file=sys.stderr)
        return 1, None


def cmd_create_user(args, config):
    from popug.auth import queries

    password = read_password()
    if password is None:
        return 1
    status, user = run_with_database(
        config,
        lambda db: queries.create_user(
            db, args.username, password, args.role, args.email, config.auth.bcrypt_cost
        ),
    )
    if user:
        print(f"created user {user.username} (id {user.id}, role {user.role})")
    return status


def cmd_set_password(args, config):
    from popug.auth import queries

    password = read_password()
    if password is None:
        return 1
    status, user = run_with_database(
        config,
        lambda db: queries.set_password(db, args.username, password, config.auth.bcrypt_cost),
    )
    if user:
        print(f"password of {user.username} changed; their sessions and tokens were ended")
    return status


def cmd_replicate(args, config):
    from popug.replicator import engine
    from popug.replicator.service import replicas_from_config

    dsn = prepare_database(config, serving=False)
    replicas = replicas_from_config(config)
    unknown = [n for n in args.full if n not in {r.name for r in replicas}]
    if unknown:
        print(
            f"popug: no replica named {unknown[0]!r} (replicas: "
            f"{', '.join(r.name for r in replicas)})",
            file=sys.stderr,
        )
        return 2
    status = 0
    if args.verify:
        print(f"{'replica':12} {'table':12} {'master rows':>12} {'replica rows':>12}  result")
        for replica in replicas:
            try:
                report = engine.verify(dsn, replica)
            except Exception as e:  # one broken replica must not hide the others' results
                print(f"{replica.name:12} ERROR {engine.describe(e)}")
                status = 1
                continue
            for table, m_rows, r_rows, same in report:
                print(
                    f"{replica.name:12} {table:12} {m_rows:12} {r_rows:12}  "
                    f"{'OK' if same else 'DIFFERENT'}"
                )
                status = status or (0 if same else 1)
        return status
    for replica in replicas:
        try:
            result = engine.run_cycle(dsn, replica, full=replica.name in args.full, wait=True)
        except Exception as e:  # reported per replica; the others still run
            print(f"{replica.name}: FAILED {engine.describe(e)}", file=sys.stderr)
            status = 1
            continue
        tables = ", ".join(
            f"{t} {v['rows']} rows ({v['copied']} copied)" for t, v in result.tables.items()
        )
        kind = "full copy" if result.full else "incremental"
        print(
            f"{replica.name}: version {result.version}, {kind} in {result.seconds:.2f} s: {tables}"
        )
    return status


def cmd_close_day(args, config):
    from popug.accounting import queries
    from popug.common import days
    from popug.common.web import public_url

    calendar = days.BusinessCalendar.from_config(config)
    if args.through:
        try:
            through = days.parse_day(args.through, "--through")
        except days.BadDate as e:
            print(f"popug: {e}", file=sys.stderr)
            return 2
    else:
        through = calendar.last_finished_day()

    async def close(db):
        rows = await queries.close_days_through(
            db, calendar, through, "popug close-day", public_url(config, "accounting")
        )
        return rows, await queries.last_closed_day(db), await queries.first_entry_day(db, calendar)

    status, result = run_with_database(config, close)
    if status:
        return status
    rows, last, first_entry = result
    for r in rows:
        print(
            f"{r.day} closed{' early' if r.early else ''}: {r.popugs_paid} "
            f"popug{'s' if r.popugs_paid != 1 else ''} paid, {r.total_paid} in total"
        )
    if not rows:
        if first_entry is None:
            print(f"nothing to close through {through}: the ledger has no entries yet")
        elif last is None:
            print(
                f"nothing to close through {through}: the first entry is on {first_entry} "
                f"(close it early with --through {first_entry})"
            )
        else:
            print(f"nothing to close: every day through {last} is closed already")
    return 0


def cmd_dbshell(args, config):
    from psycopg2.extensions import make_dsn, parse_dsn

    from popug.common.embedded import psql_binary

    # The password goes to psql in its environment, not on a command line
    # that every user of the machine can read in ps.
    params = parse_dsn(database_dsn(config, create=False))
    env = dict(os.environ)
    if "password" in params:
        env["PGPASSWORD"] = params.pop("password")
    cmd = [psql_binary(), make_dsn(**params)]
    if not sys.stdin.isatty():
        cmd += ["-v", "ON_ERROR_STOP=1", "-X", "-q"]
    # Ctrl-C belongs to psql (it cancels the query), not to us.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call(cmd, env=env)
    except FileNotFoundError:
        print("popug: psql not found; install the PostgreSQL client", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)


COMMANDS = {
    None: cmd_serve,
    "serve": cmd_serve,
    "migrate": cmd_migrate,
    "create-user": cmd_create_user,
    "set-password": cmd_set_password,
    "dbshell": cmd_dbshell,
    "replicate": cmd_replicate,
    "close-day": cmd_close_day,
}


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        config = load_config(
            args.config or default_config_path(),
            environ=os.environ,
            overrides={"server.port": args.port, "data_dir": args.data_dir},
        )
    except ConfigError as e:
        print(f"popug: config: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    exit_cleanly_on_sigterm()
    try:
        return COMMANDS[args.command](args, config)
    except KeyboardInterrupt:
        return 130
    except NoDatabaseHere as e:
        print(f"popug: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        if e.filename is None:
            raise
        print(
            f"popug: cannot use {e.filename}: {e.strerror} (the data folder "
            f"{config.data_dir} must be a folder this user can write)",
            file=sys.stderr,
        )
        return 1
    except Exception as e:  # the database not starting is the usual one
        import psycopg2

        if isinstance(e, psycopg2.OperationalError):
            print(f"popug: cannot reach the database: {str(e).strip()}", file=sys.stderr)
            return 1
        if isinstance(e, psycopg2.ProgrammingError) and "invalid dsn" in str(e):
            print(f"popug: config: database.dsn: {str(e).strip()}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
