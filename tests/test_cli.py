"""bin/popug as a sysadmin uses it: config errors, admin commands, the embedded server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg2
import pytest

REPO = Path(__file__).resolve().parent.parent
POPUG = [sys.executable, str(REPO / "bin" / "popug")]


def popug(*args, env=None, input=None, timeout=60, cwd=None):
    e = clean_env(**(env or {}))
    return subprocess.run(
        POPUG + list(args),
        env=e,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port, proc, log, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bin/popug exited {proc.returncode}:\n{log.read_text()}")
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/healthz", headers={"Host": "auth.uberpopug.localhost"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                return r.read()
        except OSError:
            time.sleep(0.2)
    raise AssertionError("bin/popug did not become healthy:\n" + log.read_text())


def test_help_lists_services_and_commands():
    r = popug("--help")
    assert r.returncode == 0
    for word in (
        "--service",
        "--config",
        "--port",
        "--data-dir",
        "create-user",
        "migrate",
        "dbshell",
        "tracker",
        "notifier",
    ):
        assert word in r.stdout


def test_a_config_mistake_stops_the_start_with_one_line(tmp_path):
    f = tmp_path / "popug.yaml"
    f.write_text("server:\n  port: eighty\n")
    r = popug("--config", str(f), "--data-dir", str(tmp_path))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "popug: config: server.port: expected a TCP port number 1-65535 (int), got 'eighty'"
    ]
    r = popug("--data-dir", str(tmp_path), env={"POPUG_DATABSE__DSN": "x"})
    assert r.returncode == 2 and "POPUG_DATABSE__DSN: unknown key databse.dsn" in r.stderr


def test_unknown_service_name_is_refused():
    r = popug("--service=payroll")
    assert r.returncode == 2 and "invalid choice: 'payroll'" in r.stderr


def test_migrate_create_user_and_dbshell_on_a_dsn(db_dsn, tmp_path):
    env = {
        "POPUG_DATABASE__DSN": db_dsn,
        "POPUG_DATA_DIR": str(tmp_path),
        "POPUG_AUTH__BCRYPT_COST": "4",
    }
    r = popug("migrate", env=env)
    assert r.returncode == 0 and "up to date" in r.stdout
    r = popug(
        "create-user",
        "kiwi",
        "--role",
        "manager",
        "--email",
        "kiwi@popug.test",
        env=env,
        input="kiwi-password\n",
    )
    assert r.returncode == 0, r.stderr
    assert "created user kiwi" in r.stdout and "kiwi-password" not in r.stdout + r.stderr
    r = popug("create-user", "kiwi", "--email", "k@popug.test", env=env, input="other-password\n")
    assert r.returncode == 1 and "already taken" in r.stderr
    r = popug(
        "create-user",
        "pip",
        "--role",
        "boss",
        "--email",
        "p@popug.test",
        env=env,
        input="pip-password\n",
    )
    assert r.returncode == 1 and "unknown role 'boss'" in r.stderr
    r = popug("dbshell", env=env, input="SELECT username || '/' || role FROM core.users;\n")
    assert r.returncode == 0, r.stderr
    assert "kiwi/manager" in r.stdout
    r = popug("dbshell", env=env, input="SELECT * FROM no_such_table;\n")
    assert r.returncode != 0 and "no_such_table" in r.stderr
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM core.users WHERE username = 'kiwi'")
        assert cur.fetchone()[0] == 1


def test_unreachable_database_is_one_clear_line(tmp_path):
    r = popug(
        "migrate", env={"POPUG_DATABASE__DSN": "host=127.0.0.1 port=1 dbname=x connect_timeout=2"}
    )
    assert r.returncode == 1
    assert r.stderr.startswith("popug: cannot reach the database:")
    assert "Traceback" not in r.stderr


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("POPUG_")}
    env.update(extra)
    return env


def start_serve(args, log, env, append=False):
    """bin/popug with `args`, its output in `log`; returns the Popen."""
    with open(log, "a" if append else "w") as out:
        return subprocess.Popen(POPUG + list(args), env=env, stdout=out, stderr=subprocess.STDOUT)


def serve_on_dsn(db_dsn, tmp_path, *args, **env_vars):
    """bin/popug [args] on a free port, on this test's database, data in tmp_path/var,
    once it is healthy: (Popen, port, log file)."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = clean_env(POPUG_DATABASE__DSN=db_dsn, POPUG_DATA_DIR=str(tmp_path / "var"), **env_vars)
    proc = start_serve(["--port", str(port), *args], log, env)
    try:
        wait_healthy(port, proc, log)
    except BaseException:
        proc.kill()
        raise
    return proc, port, log


def wait_gone(pid, timeout=10):
    deadline = time.time() + timeout
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def post_json(port, service, path, body, token=None):
    """POST JSON to bin/popug on `port` as the service's host; the decoded answer."""
    headers = {"Host": f"{service}.uberpopug.localhost", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method="POST",
        data=json.dumps(body).encode(),
        headers=headers,
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def seed_boss_and_kiwi(db_dsn):
    """A manager 'boss' and a worker 'kiwi', password 'password123', straight into the DB."""
    import bcrypt

    pw = bcrypt.hashpw(b"password123", bcrypt.gensalt(4)).decode()
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email) VALUES"
            " ('boss', %s, 'manager', 'boss@popug.test'),"
            " ('kiwi', %s, 'worker', 'kiwi@popug.test')",
            (pw, pw),
        )


def boss_token(port):
    return post_json(
        port, "auth", "/api/v1/tokens", {"username": "boss", "password": "password123"}
    )["token"]


def _postmaster_pid(data):
    p = data / "pgdata" / "postmaster.pid"
    return int(p.read_text().splitlines()[0]) if p.exists() else None


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_embedded_server_shared_by_processes_and_stopped_by_the_last(tmp_path):
    data = tmp_path / "var"
    port = free_port()
    log = tmp_path / "serve.log"
    env = clean_env(POPUG_AUTH__BCRYPT_COST="4")
    serve = start_serve(["--data-dir", str(data), "--port", str(port)], log, env)
    try:
        wait_healthy(port, serve, log)
        text = log.read_text()
        password = (data / "initial-admin-password").read_text().strip()
        assert f"password: {password}" in text
        assert oct((data / "initial-admin-password").stat().st_mode & 0o777) == "0o600"
        pg_pid = _postmaster_pid(data)
        assert pg_pid and _alive(pg_pid)

        # A second process on the same folder joins the running server...
        r = popug(
            "--data-dir",
            str(data),
            "dbshell",
            input="SELECT 'users=' || count(*) FROM core.users;\n",
        )
        assert r.returncode == 0 and "users=1" in r.stdout, r.stderr
        # ...and leaving does not stop it under the first one's feet.
        assert _postmaster_pid(data) == pg_pid and _alive(pg_pid)
        wait_healthy(port, serve, log)

        # The initial admin's password logs in.
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/tokens",
            method="POST",
            data=json.dumps({"username": "admin", "password": password}).encode(),
            headers={"Host": "auth.uberpopug.localhost", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 201
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(timeout=30)
    assert code == 0, log.read_text()
    assert wait_gone(pg_pid), "SIGTERM left the embedded PostgreSQL running"


def test_embedded_server_recovers_after_a_killed_process(tmp_path):
    data = tmp_path / "var"
    port = free_port()
    log = tmp_path / "serve.log"
    env = clean_env(POPUG_AUTH__BCRYPT_COST="4")
    first = start_serve(["--data-dir", str(data), "--port", str(port)], log, env)
    wait_healthy(port, first, log)
    pg_pid = _postmaster_pid(data)
    first.kill()  # SIGKILL: no atexit, its pid stays in pgserver's handle list
    first.wait()
    assert _alive(pg_pid)
    second = start_serve(["--data-dir", str(data), "--port", str(port)], log, env, append=True)
    try:
        wait_healthy(port, second, log)
        assert _postmaster_pid(data) == pg_pid  # joined, not a second server
        assert (data / "initial-admin-password").exists()
        assert log.read_text().count("created user 'admin'") == 1
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    assert wait_gone(pg_pid), "the dead pid kept the embedded PostgreSQL alive"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_on_a_dsn_stops_cleanly_on_signals(db_dsn, tmp_path, sig):
    proc, _, log = serve_on_dsn(db_dsn, tmp_path, "--service=tracker")
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 0
    assert "stopped" in log.read_text()


def test_two_processes_starting_at_once_on_an_empty_folder_share_one_server(tmp_path):
    data = tmp_path / "var"
    env = clean_env(POPUG_AUTH__BCRYPT_COST="4")
    ports = [free_port(), free_port()]
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [
        start_serve(["--data-dir", str(data), "--port", str(port)], log, env)
        for port, log in zip(ports, logs, strict=True)
    ]
    try:
        for port, proc, log in zip(ports, procs, logs, strict=True):
            wait_healthy(port, proc, log)
        text = logs[0].read_text() + logs[1].read_text()
        assert text.count("created user 'admin'") == 1
        assert "Traceback" not in text
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(timeout=30) for p in procs]
    assert codes == [0, 0]


def test_sigterm_lets_a_request_in_flight_finish(db_dsn, tmp_path):
    """A login with a slow bcrypt is running when SIGTERM arrives: it still gets its 201."""
    import threading

    import bcrypt

    slow = bcrypt.hashpw(b"slow-password", bcrypt.gensalt(14)).decode()  # ~1 s to check
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role)"
            " VALUES ('slowpoke', %s, 'worker')",
            (slow,),
        )
    proc, port, log = serve_on_dsn(db_dsn, tmp_path)
    result = {}

    def login():
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/tokens",
            method="POST",
            data=json.dumps({"username": "slowpoke", "password": "slow-password"}).encode(),
            headers={"Host": "auth.uberpopug.localhost", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                result["status"] = resp.status
        except Exception as e:  # noqa: BLE001 - the test reports whatever happened
            result["error"] = repr(e)

    t = threading.Thread(target=login)
    t.start()
    time.sleep(0.3)  # the request is inside bcrypt now
    proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert proc.wait(timeout=30) == 0
    assert result == {"status": 201}, log.read_text()


def test_set_password_from_stdin_ends_sessions(db_dsn, tmp_path):
    env = {
        "POPUG_DATABASE__DSN": db_dsn,
        "POPUG_DATA_DIR": str(tmp_path),
        "POPUG_AUTH__BCRYPT_COST": "4",
    }
    r = popug("create-user", "kiwi", "--email", "kiwi@popug.test", env=env, input="kiwi-password\n")
    assert r.returncode == 0, r.stderr
    r = popug("set-password", "KIWI", env=env, input="fresh-password\n")
    assert r.returncode == 0 and "password of kiwi changed" in r.stdout, r.stderr
    r = popug("set-password", "ghost", env=env, input="fresh-password\n")
    assert r.returncode == 1 and "there is no user 'ghost'" in r.stderr
    r = popug("set-password", "kiwi", env=env, input="short\n")
    assert r.returncode == 1 and "too short" in r.stderr
    import bcrypt

    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT password_hash FROM core.users WHERE username = 'kiwi'")
        assert bcrypt.checkpw(b"fresh-password", cur.fetchone()[0].encode())


def test_admin_commands_never_create_a_second_empty_database(tmp_path):
    for args in (
        ["create-user", "ops", "--email", "ops@popug.test"],
        ["set-password", "ops"],
        ["migrate"],
        ["dbshell"],
    ):
        r = popug("--data-dir", str(tmp_path / "typo"), *args, input="some-password-1\n")
        assert r.returncode == 1, (args, r.stderr)
        assert "no database here" in r.stderr
    assert not (tmp_path / "typo" / "pgdata").exists()


def test_options_may_follow_the_command(db_dsn, tmp_path):
    f = tmp_path / "popug.yaml"
    f.write_text(f"database:\n  dsn: '{db_dsn}'\n")
    r = popug("dbshell", "--config", str(f), input="SELECT 'here=' || current_database();\n")
    assert r.returncode == 0 and "here=popug_test" in r.stdout, r.stderr
    r = popug("migrate", "--data-dir", str(tmp_path), "--config", str(f))
    assert r.returncode == 0 and "up to date" in r.stdout


def test_malformed_dsn_and_unwritable_data_folder_are_one_line(tmp_path):
    r = popug("migrate", env={"POPUG_DATABASE__DSN": "garbage"})
    assert r.returncode == 2 and r.stderr.startswith("popug: config: database.dsn: invalid dsn")
    assert "Traceback" not in r.stderr
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    r = popug("--data-dir", str(not_a_folder / "var"), "--port", str(free_port()))
    assert r.returncode == 1 and f"popug: cannot use {not_a_folder}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_set_password_with_a_name_that_is_not_utf8_is_one_line(db_dsn, tmp_path):
    e = clean_env(POPUG_DATABASE__DSN=db_dsn, POPUG_DATA_DIR=str(tmp_path))
    r = subprocess.run(
        POPUG + ["set-password", b"w3\xff".decode("utf-8", "surrogateescape")],
        env=e,
        input="good-password\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "username is not valid Unicode text" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run(
        POPUG + ["set-password", "anyone"],
        env=e,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "no password given on stdin" in r.stderr


def test_a_running_system_delivers_the_assignment_email_into_the_maildir(db_dsn, tmp_path):
    seed_boss_and_kiwi(db_dsn)
    proc, port, _ = serve_on_dsn(db_dsn, tmp_path, POPUG_NOTIFIER__INTERVAL_S="0.2")
    try:
        token = boss_token(port)
        task = post_json(port, "tasktracker", "/api/v1/tasks", {"title": "Mail me"}, token)
        new = tmp_path / "var" / "mail" / "new"
        deadline = time.time() + 10
        while time.time() < deadline and not (new.exists() and list(new.iterdir())):
            time.sleep(0.1)
        [path] = list(new.iterdir())
        text = path.read_text()
        assert "To: kiwi@popug.test" in text and f"New task #{task['id']}: Mail me" in text
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_replication_in_a_running_system_and_replicate_verify(db_dsn, tmp_path):
    seed_boss_and_kiwi(db_dsn)
    proc, port, log = serve_on_dsn(db_dsn, tmp_path, POPUG_REPLICATION__INTERVAL_S="0.5")
    try:
        token = boss_token(port)
        task_id = post_json(port, "tasktracker", "/api/v1/tasks", {"title": "Replicate me"}, token)[
            "id"
        ]
        # Within one interval (plus the cycle itself), in both replicas.
        deadline = time.time() + 5
        found = set()
        while time.time() < deadline and len(found) < 2:
            with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
                for schema in ("accounting", "analytics"):
                    cur.execute("SELECT to_regclass(%s)", (f"{schema}.tasks",))
                    if cur.fetchone()[0]:
                        cur.execute(f"SELECT 1 FROM {schema}.tasks WHERE id = %s", (task_id,))
                        if cur.fetchone():
                            found.add(schema)
            time.sleep(0.1)
        assert found == {"accounting", "analytics"}, log.read_text()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    cli_env = {"POPUG_DATABASE__DSN": db_dsn, "POPUG_DATA_DIR": str(tmp_path / "var")}
    r = popug("replicate", "--verify", env=cli_env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count(" OK") == 8 and "DIFFERENT" not in r.stdout
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("UPDATE analytics.tasks SET reward = 99.99")
    r = popug("replicate", "--verify", env=cli_env)
    assert r.returncode == 1
    assert [line.split()[:2] for line in r.stdout.splitlines() if "DIFFERENT" in line] == [
        ["analytics", "tasks"]
    ]
    r = popug("replicate", "--full", "analytics", env=cli_env)
    assert r.returncode == 0 and "analytics: version" in r.stdout and "full copy" in r.stdout
    assert popug("replicate", "--verify", env=cli_env).returncode == 0
    r = popug("replicate", "--full", "nope", env=cli_env)
    assert r.returncode == 2 and "no replica named 'nope'" in r.stderr
