"""Replicator: COPY master -> replicas, incremental and consistent, alerts, verify, status."""

import asyncio
import copy
import threading

import psycopg2
import pytest
from psycopg2 import sql

from popug.replicator import engine
from popug.replicator.service import Replicator, replicas_from_config
from tests.conftest import admin_connection, dsn_for

HOSTILE = [
    "tab\there",
    "new\nline",
    "carriage\r\nreturn",
    "back\\slash \\N \\t \\\\",
    "\\.",
    "line\n\\.\nafter the end-of-data marker",
    "emoji 🦜🦜 and ünïcödé, 中文",
    "quote ' \" and ; DROP TABLE core.tasks; --",
]


def run(fn, *args, **kwargs):
    return asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


def replica(env, name="accounting"):
    return {r.name: r for r in replicas_from_config(env.config)}[name]


async def rows(env, query, *params):
    return [tuple(r.values()) for r in await env.db.fetch_all(query, *params)]


async def seed(env, tasks=5):
    manager = await env.api("manager")
    for _ in range(3):
        await env.user("worker")
    created = []
    for i in range(tasks):
        r = await manager.post("tracker", "/api/v1/tasks", json={"title": f"task {i}"})
        created.append(r.json())
    return manager, created


@pytest.mark.gen_test
async def test_a_task_reaches_both_replicas_in_one_cycle_without_secrets(env):
    _, created = await seed(env)
    outcome = await Replicator(env.config, env.db).cycle_all()
    assert set(outcome) == {"accounting", "analytics"}
    for schema in ("accounting", "analytics"):
        assert await rows(env, f"SELECT id, title FROM {schema}.tasks ORDER BY id") == [
            (t["id"], t["title"]) for t in created
        ]
        assert await rows(env, f"SELECT count(*) FROM {schema}.ledger") == [(5,)]
        cols = await rows(
            env,
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'users'",
            schema,
        )
        assert {c for (c,) in cols} == {
            "id",
            "username",
            "role",
            "email",
            "active",
            "created_at",
            "updated_at",
        }
    tables = await rows(
        env,
        "SELECT table_schema, table_name FROM information_schema.tables"
        " WHERE table_schema IN ('accounting', 'analytics')",
    )
    assert not any(t in ("sessions", "sso_codes", "login_failures") for _, t in tables)
    api = await env.api("admin")
    status = (await api.get("replicator", "/api/v1/status")).json()["replicas"]
    assert [s["name"] for s in status] == ["accounting", "analytics"]
    for s in status:
        assert s["version"] == 1 and s["last_error"] is None and 0 <= s["lag_s"] < 60
        assert s["tables"]["tasks"]["rows"] == 5


@pytest.mark.gen_test
async def test_hostile_strings_arrive_byte_for_byte(env):
    manager, _ = await seed(env, tasks=0)
    for i, text in enumerate(HOSTILE):
        r = await manager.post(
            "tracker", "/api/v1/tasks", json={"title": f"{i} {text}"[:200], "description": text}
        )
        assert r.status == 201, r
    await Replicator(env.config, env.db).cycle_all()
    master = await rows(env, "SELECT id, title, description FROM core.tasks ORDER BY id")
    assert (
        await rows(env, "SELECT id, title, description FROM accounting.tasks ORDER BY id") == master
    )
    assert [m[2] for m in master] == HOSTILE


@pytest.mark.gen_test
async def test_incremental_cycle_copies_only_what_changed(env):
    manager, created = await seed(env)
    rep = replica(env)
    first = await run(engine.run_cycle, env.db.dsn, rep)
    assert first.full and first.tables["tasks"]["copied"] == 5
    # Nothing changed: nothing copied, version stays.
    again = await run(engine.run_cycle, env.db.dsn, rep)
    assert not again.full and again.version == first.version
    assert {t: v["copied"] for t, v in again.tables.items()} == {
        "users": 0,
        "tasks": 0,
        "ledger": 0,
        "closed_days": 0,
    }
    t = created[0]
    worker = await env.token_for(t["assignee"]["username"])
    from tests.conftest import Api

    r = await Api(env, worker).post("tracker", f"/api/v1/tasks/{t['id']}/complete")
    assert r.status == 200
    third = await run(engine.run_cycle, env.db.dsn, rep)
    assert third.version == first.version + 1
    assert {tb: v["copied"] for tb, v in third.tables.items()} == {
        "users": 0,
        "tasks": 1,
        "ledger": 1,
        "closed_days": 0,
    }
    assert third.tables["tasks"]["rows"] == 5 and third.tables["ledger"]["rows"] == 6
    assert await rows(env, "SELECT status FROM accounting.tasks WHERE id = %s", t["id"]) == [
        ("done",)
    ]


@pytest.mark.gen_test
async def test_a_transaction_open_across_a_cycle_is_copied_by_the_next(env, db_dsn):
    await seed(env, tasks=1)
    rep = replica(env)
    await run(engine.run_cycle, env.db.dsn, rep)
    user_id = (await rows(env, "SELECT id FROM core.users WHERE role = 'worker' LIMIT 1"))[0][0]
    # T1 takes its xid first and stays open; T2 writes after it and commits.
    slow = psycopg2.connect(db_dsn)
    with slow.cursor() as cur:
        cur.execute(
            "INSERT INTO core.ledger (user_id, kind, amount, day)"
            " VALUES (%s, 'payout', -1.00, '2026-01-01')"
            " RETURNING id",
            (user_id,),
        )
        slow_id = cur.fetchone()[0]
    await env.db.run(
        "INSERT INTO core.ledger (user_id, kind, amount, day)"
        " VALUES (%s, 'payout', -2.00, '2026-01-02')",
        user_id,
    )
    during = await run(engine.run_cycle, env.db.dsn, rep)
    assert during.tables["ledger"]["copied"] == 1  # T2 only: T1 is not committed
    ids = {i for (i,) in await rows(env, "SELECT id FROM accounting.ledger")}
    assert slow_id not in ids
    slow.commit()
    slow.close()
    after = await run(engine.run_cycle, env.db.dsn, rep)
    assert after.tables["ledger"]["copied"] == 1
    ids = {i for (i,) in await rows(env, "SELECT id FROM accounting.ledger")}
    assert slow_id in ids
    report = await run(engine.verify, env.db.dsn, rep)
    assert all(same for *_, same in report)


@pytest.mark.gen_test
async def test_a_failing_cycle_leaves_the_replica_exactly_as_it_was(env):
    manager, _ = await seed(env, tasks=3)
    rep = replica(env)
    await run(engine.run_cycle, env.db.dsn, rep)
    before = await rows(env, "SELECT * FROM accounting.tasks ORDER BY id")
    state = await rows(env, "SELECT * FROM accounting._replica_state ORDER BY table_name")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "new one"})

    def explode(rc):
        raise RuntimeError("disk full, say")

    with pytest.raises(RuntimeError):
        await run(engine.run_cycle, env.db.dsn, rep, after_copy=explode)
    assert await rows(env, "SELECT * FROM accounting.tasks ORDER BY id") == before
    assert await rows(env, "SELECT * FROM accounting._replica_state ORDER BY table_name") == state
    # And the next cycle picks up what the failed one did not deliver.
    result = await run(engine.run_cycle, env.db.dsn, rep)
    assert result.tables["tasks"]["rows"] == 4


@pytest.mark.gen_test
async def test_two_replicators_never_interleave(env, db_dsn):
    await seed(env, tasks=2)
    rep = replica(env)
    holder = psycopg2.connect(db_dsn)
    with holder.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (engine.CYCLE_LOCK,))
    with pytest.raises(engine.Busy):
        await run(engine.run_cycle, env.db.dsn, rep)
    outcome = await Replicator(env.config, env.db).cycle_all()
    assert outcome == {"accounting": "busy", "analytics": "busy"}
    holder.rollback()
    holder.close()
    # Two at once: each replica's cycle runs once at a time, both finish.
    a, b = Replicator(env.config, env.db), Replicator(env.config, env.db)
    results = await asyncio.gather(a.cycle_all(), b.cycle_all())
    for name in ("accounting", "analytics"):
        kinds = [r[name] if isinstance(r[name], str) else "done" for r in results]
        assert "done" in kinds and set(kinds) <= {"done", "busy"}
    assert await rows(env, "SELECT count(*) FROM accounting.tasks") == [(2,)]


@pytest.mark.gen_test
async def test_verify_finds_a_hand_made_difference(env):
    await seed(env, tasks=4)
    rep = replica(env)
    await run(engine.run_cycle, env.db.dsn, rep)
    report = await run(engine.verify, env.db.dsn, rep)
    assert [(t, same) for t, _, _, same in report] == [
        ("users", True),
        ("tasks", True),
        ("ledger", True),
        ("closed_days", True),
    ]
    await env.db.run("UPDATE accounting.tasks SET title = 'tampered' WHERE id = 1")
    await env.db.run("DELETE FROM accounting.ledger WHERE id = 2")
    report = {t: (m, r, same) for t, m, r, same in await run(engine.verify, env.db.dsn, rep)}
    assert report["tasks"] == (4, 4, False)
    assert report["ledger"] == (4, 3, False)
    assert report["users"][2] is True
    # A full copy repairs it.
    await run(engine.run_cycle, env.db.dsn, rep, full=True)
    assert all(same for *_, same in await run(engine.verify, env.db.dsn, rep))


@pytest.mark.gen_test
async def test_dropped_replica_alerts_once_is_repaired_and_recovery_is_announced(env):
    from popug.notifier.service import Notifier

    api = await env.api("admin", email="root@popug.test")
    await seed(env, tasks=3)
    replicator = Replicator(env.config, env.db)
    await replicator.cycle_all()
    await env.db.run("DELETE FROM core.outbox")
    await env.db.run("DROP SCHEMA accounting CASCADE")
    for _ in range(1):
        outcome = await replicator.cycle_all()
        assert "missing or damaged" in outcome["accounting"]
        assert not isinstance(outcome["analytics"], str)
    status = {
        s["name"]: s for s in (await api.get("replicator", "/api/v1/status")).json()["replicas"]
    }
    assert "missing or damaged" in status["accounting"]["last_error"]
    # The next cycle repairs it with a full copy and announces the recovery.
    outcome = await replicator.cycle_all()
    assert outcome["accounting"].full
    assert await rows(env, "SELECT count(*) FROM accounting.tasks") == [(3,)]
    await replicator.cycle_all()
    messages = await env.db.fetch_all(
        "SELECT kind, recipient, subject FROM core.outbox ORDER BY id"
    )
    assert [(m.kind, m.recipient) for m in messages] == [
        ("replication_alert", "root@popug.test"),
        ("replication_recovered", "root@popug.test"),
    ]
    assert messages[0].subject == "Replication of accounting is failing"
    sent, failed = await Notifier(env.config, env.db).deliver_due()
    assert (sent, failed) == (2, 0)
    from tests.test_notifier import mails

    assert [(m["To"], m["Subject"]) for m in mails(env.config)] == [
        ("root@popug.test", "Replication of accounting is failing"),
        ("root@popug.test", "Replication of accounting works again"),
    ]


@pytest.mark.gen_test
async def test_an_unreachable_replica_is_one_incident_not_one_alert_per_cycle(env, pg):
    await env.user("admin", email="root@popug.test")
    await seed(env, tasks=1)
    admin_dsn, _ = pg
    other = f"{env.config.database.dsn.split('dbname=')[1].split()[0]}_other"
    with admin_connection(admin_dsn) as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(other)))
    try:
        cfg = copy.deepcopy(env.config)
        cfg.replication["replicas"] = {
            "far": {
                "schema": "far",
                "dsn": dsn_for(admin_dsn, other) + " connect_timeout=2",
                "tables": {"tasks": cfg.replication.replicas["accounting"]["tables"]["tasks"]},
            }
        }
        replicator = Replicator(cfg, env.db)
        real_dsn = replicator.replicas[0].dsn
        assert not isinstance((await replicator.cycle_all())["far"], str)
        replicator.replicas[0].dsn = "host=127.0.0.1 port=1 dbname=x connect_timeout=2"
        for _ in range(3):
            assert "OperationalError" in (await replicator.cycle_all())["far"]
        replicator.replicas[0].dsn = real_dsn
        assert not isinstance((await replicator.cycle_all())["far"], str)
        kinds = [
            r.kind
            for r in await env.db.fetch_all(
                "SELECT kind FROM core.outbox WHERE kind LIKE 'replication%%' ORDER BY id"
            )
        ]
        assert kinds == ["replication_alert", "replication_recovered"]
        far = psycopg2.connect(dsn_for(admin_dsn, other))
        with far.cursor() as cur:
            cur.execute("SELECT count(*) FROM far.tasks")
            assert cur.fetchone()[0] == 1
        far.close()
    finally:
        with admin_connection(admin_dsn) as cur:
            cur.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(other))
            )


@pytest.mark.gen_test
async def test_readers_of_a_replica_never_see_half_a_cycle(env, db_dsn):
    manager, _ = await seed(env, tasks=20)
    rep = replica(env)
    await run(engine.run_cycle, env.db.dsn, rep)
    stop = threading.Event()
    seen = []

    def reader():
        conn = psycopg2.connect(db_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                # In one statement: tasks and their fee entries must always match.
                cur.execute(
                    "SELECT (SELECT count(*) FROM accounting.tasks),"
                    " (SELECT count(*) FROM accounting.ledger WHERE kind = 'fee')"
                )
                seen.append(cur.fetchone())
        conn.close()

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(5):
            for i in range(10):
                await manager.post("tracker", "/api/v1/tasks", json={"title": f"more {i}"})
            await run(engine.run_cycle, env.db.dsn, rep)
    finally:
        stop.set()
        t.join()
    assert seen and all(tasks == fees for tasks, fees in seen)
    assert seen[-1] == (70, 70)


@pytest.mark.gen_test
async def test_status_page_is_for_admins(env):
    await seed(env, tasks=1)
    await Replicator(env.config, env.db).cycle_all()
    admin = await env.browser("admin")
    r = await admin.get("replicator", "/")
    assert r.status == 200 and "accounting" in r.text and "Version" in r.text
    for role in ("manager", "worker", "accountant"):
        b = await env.browser(role)
        assert (await b.get("replicator", "/")).status == 403
        assert (await (await env.api(role)).get("replicator", "/api/v1/status")).status == 403


@pytest.mark.gen_test
async def test_a_replica_table_without_its_primary_key_is_reported_then_rebuilt(env):
    manager, _ = await seed(env, tasks=2)
    replicator = Replicator(env.config, env.db)
    await replicator.cycle_all()
    await env.db.run("ALTER TABLE accounting.tasks DROP CONSTRAINT tasks_pkey")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "after the damage"})
    outcome = await replicator.cycle_all()
    assert "missing or damaged" in outcome["accounting"]
    outcome = await replicator.cycle_all()
    assert outcome["accounting"].full
    assert await rows(env, "SELECT count(*) FROM accounting.tasks") == [(3,)]
    assert all(same for *_, same in await run(engine.verify, env.db.dsn, replica(env)))
    versions = [
        r[0]
        for r in await rows(
            env, "SELECT version FROM core.replica_status WHERE name = 'accounting'"
        )
    ]
    assert versions[0] >= 2  # never back to 1 after a repair


@pytest.mark.gen_test(timeout=40)
async def test_an_unanswering_replica_server_fails_its_cycle_and_not_the_others(env):
    import socket as socketlib

    await seed(env, tasks=1)
    silent = socketlib.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never speaks
    try:
        cfg = copy.deepcopy(env.config)
        cfg.replication["replicas"]["far"] = {
            "schema": "far",
            "tables": cfg.replication.replicas["accounting"]["tables"],
            "dsn": f"host=127.0.0.1 port={silent.getsockname()[1]} dbname=x user=x",
        }
        replicator = Replicator(cfg, env.db)
        replicator.replicas.sort(key=lambda r: r.name != "far")  # the silent one first
        outcome = await replicator.cycle_all()
        assert "timeout" in outcome["far"].lower()
        assert not isinstance(outcome["accounting"], str)
        assert not isinstance(outcome["analytics"], str)
    finally:
        silent.close()


@pytest.mark.gen_test
async def test_columns_added_by_an_upgrade_are_copied_without_an_alarm_and_indexed(env):
    await env.api("admin", email="root@popug.test")
    await seed(env, tasks=2)
    replicator = Replicator(env.config, env.db)
    await replicator.cycle_all()
    # A replica as an older release left it: no ledger.day, no shape recorded.
    await env.db.run("ALTER TABLE accounting.ledger DROP COLUMN day")
    await env.db.run("UPDATE accounting._replica_state SET shape = NULL")
    await env.db.run("DELETE FROM core.outbox")
    outcome = await replicator.cycle_all()
    assert outcome["accounting"].tables["ledger"]["full"], outcome
    assert await env.scalar("SELECT count(*) FROM core.outbox") == 0  # no alert
    indexes = {
        r.indexname
        for r in await env.db.fetch_all(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'accounting'"
        )
    }
    assert {"ledger_user_time_idx", "ledger_time_idx", "ledger_payout_day_idx"} <= indexes
    assert all(same for *_, same in await run(engine.verify, env.db.dsn, replica(env)))
    # The same change by hand, once the shape is on record, is damage: reported.
    await env.db.run("ALTER TABLE accounting.ledger DROP COLUMN day")
    outcome = await replicator.cycle_all()
    assert "missing or damaged" in outcome["accounting"]
    assert await env.scalar("SELECT count(*) FROM core.outbox") == 1
