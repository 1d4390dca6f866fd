"""Accounting: balances and audit logs from the replica, earnings, the end-of-day close."""

import asyncio
import datetime as dt
import os
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from popug.accounting import queries as q
from popug.accounting.service import DayCloser
from popug.common.days import UTC, BusinessCalendar
from popug.common.db import Database
from popug.notifier.service import Notifier
from popug.replicator.service import Replicator
from tests.test_notifier import mails

BERLIN = ZoneInfo("Europe/Berlin")
REPO = Path(__file__).resolve().parent.parent
D = Decimal


async def sync(env):
    """One replication cycle: the accounting replica catches up with the master."""
    outcome = await Replicator(env.config, env.db).cycle_all()
    assert not isinstance(outcome["accounting"], str), outcome


async def add_task(env, worker, at, fee="15.00", reward="30.00", title="Sort seeds"):
    """A task assigned to `worker` at `at`, with its fee debit (as the tracker writes them)."""
    creator = await env.scalar("SELECT id FROM core.users ORDER BY id LIMIT 1")
    task_id = await env.scalar(
        "INSERT INTO core.tasks (title, description, assignee_id, assign_fee, reward,"
        " created_by, created_at, assigned_at) VALUES (%s, 'by hand', %s, %s, %s, %s, %s, %s)"
        " RETURNING id",
        title,
        worker.id,
        D(fee),
        D(reward),
        creator,
        at,
        at,
    )
    await env.db.run(
        "INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)"
        " VALUES (%s, %s, 'fee', %s, %s)",
        worker.id,
        task_id,
        -D(fee),
        at,
    )
    return task_id


async def complete(env, task_id, at):
    await env.db.run(
        "UPDATE core.tasks SET status = 'done', completed_at = %s WHERE id = %s", at, task_id
    )
    await env.db.run(
        "INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)"
        " SELECT assignee_id, id, 'reward', reward, %s FROM core.tasks WHERE id = %s",
        at,
        task_id,
    )


async def master_balance(env, user_id):
    return await env.scalar(
        "SELECT coalesce(sum(amount), 0) FROM core.ledger WHERE user_id = %s", user_id
    )


def calendar(env):
    return BusinessCalendar.from_config(env.config)


def berlin(env):
    env.config.accounting["timezone"] = "Europe/Berlin"
    return calendar(env)


async def close(env, through, now=None, cal=None):
    return await q.close_days_through(
        env.db, cal or calendar(env), through, "test", "http://accounting.test/", now=now
    )


async def payouts(env):
    rows = await env.db.fetch_all(
        "SELECT user_id, day, amount FROM core.ledger WHERE kind = 'payout' ORDER BY day, user_id"
    )
    return [(r.user_id, r.day, r.amount) for r in rows]


# --- the business calendar -------------------------------------------------------------


def test_dst_days_in_berlin_have_23_and_25_hours_and_no_gaps():
    cal = BusinessCalendar("Europe/Berlin", "00:00")
    spring, autumn = dt.date(2026, 3, 29), dt.date(2026, 10, 25)
    s, e = cal.bounds(spring)
    assert e - s == dt.timedelta(hours=23)
    s, e = cal.bounds(autumn)
    assert e - s == dt.timedelta(hours=25)
    # Consecutive days meet exactly, across both changes.
    day = dt.date(2026, 3, 27)
    while day < dt.date(2026, 10, 27):
        assert cal.bounds(day)[1] == cal.bounds(day + dt.timedelta(days=1))[0]
        day += dt.timedelta(days=1)
    # Both 02:30s of the autumn change belong to that day; the last instant too.
    first = dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    second = dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET
    assert cal.day_of(first) == cal.day_of(second) == autumn
    assert cal.day_of(e - dt.timedelta(microseconds=1)) == autumn
    assert cal.day_of(e) == autumn + dt.timedelta(days=1)


def test_a_cutoff_other_than_midnight_names_the_day_it_begins_on():
    cal = BusinessCalendar("Europe/Berlin", "02:00")
    tuesday = dt.date(2026, 12, 1)
    s, e = cal.bounds(tuesday)
    assert s.astimezone(BERLIN) == dt.datetime(2026, 12, 1, 2, 0, tzinfo=BERLIN)
    assert e.astimezone(BERLIN) == dt.datetime(2026, 12, 2, 2, 0, tzinfo=BERLIN)
    assert cal.day_of(dt.datetime(2026, 12, 2, 1, 30, tzinfo=BERLIN)) == tuesday
    assert cal.day_of(dt.datetime(2026, 12, 2, 2, 0, tzinfo=BERLIN)) == dt.date(2026, 12, 2)


# --- accounts ------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_balances_are_the_exact_sum_of_the_ledger(env):
    manager = await env.api("manager")
    workers = [await env.api("worker") for _ in range(3)]
    for i in range(12):
        r = await manager.post("tracker", "/api/v1/tasks", json={"title": f"task {i}"})
        assert r.status == 201
    await manager.post("tracker", "/api/v1/tasks/shuffle")
    for w in workers:
        r = await w.get("tracker", "/api/v1/tasks?assignee=me&status=open")
        for t in r.json()["tasks"][:2]:
            assert (await w.post("tracker", f"/api/v1/tasks/{t['id']}/complete")).status == 200
    await sync(env)
    for w in workers:
        r = await w.get("accounting", "/api/v1/accounts/me")
        assert r.status == 200, r
        body = r.json()
        expected = await master_balance(env, w.user.id)
        assert D(body["balance"]) == expected and body["balance"] == f"{expected:.2f}"
        # Today's log is every entry of today; the running balance ends at the closing one.
        ledger = await env.db.fetch_all(
            "SELECT id, amount FROM core.ledger WHERE user_id = %s ORDER BY created_at, id",
            w.user.id,
        )
        assert [e["id"] for e in body["entries"]] == [e.id for e in ledger]
        assert sum(D(e["amount"]) for e in body["entries"]) == expected
        assert body["opening_balance"] == "0.00"
        assert body["entries"][-1]["balance_after"] == body["closing_balance"] == body["balance"]
        fee = next(e for e in body["entries"] if e["kind"] == "fee")
        assert fee["task"]["title"].startswith("task ") and D(fee["amount"]) < 0


@pytest.mark.gen_test
async def test_a_worker_never_sees_another_account(env):
    kiwi = await env.api("worker")
    mango = await env.user("worker")
    await sync(env)
    r = await kiwi.get("accounting", f"/api/v1/accounts/{mango.id}")
    assert r.status == 403 and "not allowed to see other popugs' accounts" in r.json()["error"]
    assert (await kiwi.get("accounting", f"/api/v1/accounts/{kiwi.user.id}")).status == 200
    assert (await kiwi.get("accounting", "/api/v1/earnings")).status == 403
    browser = await env.browser("worker")
    for path in (f"/accounts/{mango.id}", "/accounts", "/overview"):
        r = await browser.get("accounting", path)
        assert r.status == 403 and "not allowed to see" in r.text, path
    r = await browser.get("accounting", "/")
    assert r.status == 200 and "My account" in r.text
    accountant = await env.api("accountant")
    r = await accountant.get("accounting", f"/api/v1/accounts/{mango.id}")
    assert r.status == 200 and r.json()["user"]["username"] == mango.username


@pytest.mark.gen_test
async def test_bad_days_and_ranges_are_clear_400s(env):
    admin = await env.api("admin")
    await sync(env)
    for path, words in [
        ("/api/v1/accounts/me?day=2026-02-30", "not a date in the calendar"),
        ("/api/v1/accounts/me?day=yesterday", "must be a date YYYY-MM-DD"),
        ("/api/v1/accounts/me?day=0001-01-01", "must be between"),
        ("/api/v1/earnings?from=2026-03-02&to=2026-03-01", "is after to"),
        ("/api/v1/earnings?from=2020-01-01&to=2026-01-01", "at most 366 days"),
        ("/api/v1/earnings?day=2026-01-01&from=2026-01-01", "either day or from/to"),
        ("/api/v1/accounts/x1", "user id must be a positive whole number"),
    ]:
        r = await admin.get("accounting", path)
        assert r.status == 400 and words in r.json()["error"], (path, r)
    assert (await admin.get("accounting", "/api/v1/accounts/999999")).status == 404
    browser = await env.browser("admin")
    r = await browser.get("accounting", "/overview?from=2026-13-01")
    assert r.status == 400 and "not a date in the calendar" in r.text


@pytest.mark.gen_test
async def test_before_the_first_replication_the_service_says_so(env):
    worker = await env.api("worker")
    r = await worker.get("accounting", "/api/v1/accounts/me")
    assert r.status == 503 and "not replicated yet" in r.json()["error"]
    assert r.headers["Retry-After"] == "5"


@pytest.mark.gen_test
async def test_an_entry_at_23_30_local_belongs_to_that_day_whatever_the_database_timezone(env):
    cal = berlin(env)
    # The database and its sessions think in another zone entirely.
    dbname = await env.scalar("SELECT current_database()")
    await env.db.run(f"ALTER DATABASE \"{dbname}\" SET TimeZone = 'Pacific/Kiritimati'")
    await env.db.pool.clear()  # new connections, with the new setting
    assert await env.scalar("SHOW TimeZone") == "Pacific/Kiritimati"
    worker = await env.api("worker")
    day = dt.date(2026, 11, 20)
    late = dt.datetime(2026, 11, 20, 23, 30, tzinfo=BERLIN)
    task = await add_task(env, worker.user, late, fee="12.00")
    await add_task(env, worker.user, late + dt.timedelta(minutes=31), fee="11.00")  # next day
    await sync(env)
    body = (await worker.get("accounting", f"/api/v1/accounts/me?day={day}")).json()
    assert [(e["task"]["id"], e["amount"]) for e in body["entries"]] == [(task, "-12.00")]
    assert body["day_starts_at"] == cal.bounds(day)[0].isoformat(timespec="microseconds")
    admin = await env.api("admin")
    r = await admin.get("accounting", f"/api/v1/earnings?day={day}")
    assert r.json()["management_earnings"] == "12.00" and r.json()["tasks_assigned"] == 1


# --- the close -----------------------------------------------------------------------


@pytest.mark.gen_test
async def test_a_negative_balance_carries_over_and_is_repaid_by_completed_tasks(env):
    cal = berlin(env)
    worker = await env.api("worker")
    day1, day2 = dt.date(2026, 11, 2), dt.date(2026, 11, 3)
    t1 = await add_task(env, worker.user, cal.starts(day1) + dt.timedelta(hours=9), fee="15.00")
    t2 = await add_task(env, worker.user, cal.starts(day1) + dt.timedelta(hours=10), fee="10.00")
    rows = await close(env, day1, now=cal.bounds(day1)[1] + dt.timedelta(seconds=5), cal=cal)
    assert [(r.day, r.popugs_paid, r.total_paid) for r in rows] == [(day1, 0, D("0.00"))]
    assert await payouts(env) == []
    await complete(env, t1, cal.starts(day2) + dt.timedelta(hours=9))  # +30.00
    await complete(env, t2, cal.starts(day2) + dt.timedelta(hours=10))  # +30.00
    rows = await close(env, day2, now=cal.bounds(day2)[1] + dt.timedelta(seconds=5), cal=cal)
    assert await payouts(env) == [(worker.user.id, day2, D("-35.00"))]
    assert await master_balance(env, worker.user.id) == 0
    await sync(env)
    first = (await worker.get("accounting", f"/api/v1/accounts/me?day={day1}")).json()
    assert (first["opening_balance"], first["closing_balance"]) == ("0.00", "-25.00")
    assert first["day_closed"] is True
    second = (await worker.get("accounting", f"/api/v1/accounts/me?day={day2}")).json()
    assert second["opening_balance"] == "-25.00"
    assert [e["kind"] for e in second["entries"]] == ["reward", "reward", "payout"]
    assert second["entries"][-1]["closes_day"] == str(day2)
    assert second["closing_balance"] == "0.00" and second["balance"] == "0.00"


@pytest.mark.gen_test
async def test_the_payout_email_lands_in_the_maildir_with_amount_and_day(env):
    cal = calendar(env)
    worker = await env.api("worker", email="kiwi@popug.test")
    day = dt.date(2026, 11, 10)
    task = await add_task(env, worker.user, cal.starts(day) + dt.timedelta(hours=1), fee="10.00")
    await complete(env, task, cal.starts(day) + dt.timedelta(hours=2))  # reward 30.00
    await close(env, day, now=cal.bounds(day)[1])
    assert await Notifier(env.config, env.db).deliver_due() == (1, 0)
    [msg] = mails(env.config)
    assert msg["To"] == "kiwi@popug.test"
    assert msg["Subject"] == "Payout for 2026-11-10: 20.00"
    body = msg.get_content()
    assert "The business day 2026-11-10 (UTC, days change at 00:00) is closed." in body
    assert "Your balance then was 20.00, and it has been paid out to you." in body
    assert "http://accounting.test/?day=2026-11-10" in body


@pytest.mark.gen_test
async def test_two_closes_at_once_and_a_repeated_close_pay_once(env):
    cal = calendar(env)
    workers = [await env.api("worker") for _ in range(5)]
    day = dt.date(2026, 11, 11)
    for w in workers:
        t = await add_task(env, w.user, cal.starts(day) + dt.timedelta(hours=3), fee="10.00")
        await complete(env, t, cal.starts(day) + dt.timedelta(hours=4))
    other = await Database.connect(env.config.database.dsn, 1, 2, 30)
    try:
        now = cal.bounds(day)[1]
        results = await asyncio.gather(
            q.close_days_through(env.db, cal, day, "a", "http://x/", now=now),
            q.close_days_through(other, cal, day, "b", "http://x/", now=now),
        )
    finally:
        await other.close()
    assert sorted(len(r) for r in results) == [0, 1]
    assert await close(env, day, now=now) == []
    assert len(await payouts(env)) == 5
    assert await env.scalar("SELECT count(*) FROM core.outbox WHERE kind = 'payout'") == 5
    assert await env.scalar("SELECT count(*) FROM core.closed_days") == 1


@pytest.mark.gen_test
async def test_the_service_closes_three_missed_days_in_order_on_start(env):
    cal = calendar(env)
    worker = await env.api("worker")
    today = cal.today()
    ran, missed = today - dt.timedelta(days=4), [today - dt.timedelta(days=n) for n in (3, 2, 1)]
    for n, day in enumerate([ran] + missed):
        t = await add_task(env, worker.user, cal.starts(day) + dt.timedelta(hours=1), fee="10.00")
        await complete(env, t, cal.starts(day) + dt.timedelta(hours=2))  # +20.00 net
        if n == 2:  # the middle missed day also leaves a task open: 20.00 - 15.00
            await add_task(env, worker.user, cal.starts(day) + dt.timedelta(hours=3))
    # The service ran until four days ago (that day was closed), then was down.
    [first] = await close(env, ran, cal=cal)
    assert first.total_paid == D("20.00")  # only what was owed at that cut-off
    closer = DayCloser(env.config, env.db)
    rows = await closer.run_once()
    assert [r.day for r in rows] == missed
    assert await payouts(env) == [
        (worker.user.id, ran, D("-20.00")),
        (worker.user.id, missed[0], D("-20.00")),
        (worker.user.id, missed[1], D("-5.00")),
        (worker.user.id, missed[2], D("-20.00")),
    ]
    assert await closer.run_once() == []  # today is not over yet


@pytest.mark.gen_test
async def test_close_on_a_dst_day_in_berlin_closes_it_once_with_its_25_hours(env):
    cal = berlin(env)
    worker = await env.api("worker")
    day = dt.date(2026, 10, 25)
    starts, ends = cal.bounds(day)
    early = await add_task(env, worker.user, starts + dt.timedelta(minutes=30), fee="10.00")
    late = await add_task(env, worker.user, ends - dt.timedelta(minutes=30), fee="10.00")
    await complete(env, early, ends - dt.timedelta(minutes=20))
    await complete(env, late, ends - dt.timedelta(minutes=10))
    outside = await add_task(env, worker.user, ends, fee="19.00")  # 00:00 on the 26th
    assert outside
    rows = await close(env, day, now=ends + dt.timedelta(minutes=1), cal=cal)
    assert [(r.day, r.total_paid, r.ends_at - r.starts_at) for r in rows] == [
        (day, D("40.00"), dt.timedelta(hours=25))
    ]
    assert await close(env, day, now=ends + dt.timedelta(hours=1), cal=cal) == []
    await sync(env)
    admin = await env.api("admin")
    r = (await admin.get("accounting", f"/api/v1/earnings?day={day}")).json()
    assert (r["fees_charged"], r["rewards_credited"], r["management_earnings"]) == (
        "20.00",
        "60.00",
        "-40.00",
    )
    assert (r["payouts"], r["popugs_paid"], r["closed"]) == ("40.00", 1, True)


@pytest.mark.gen_test
async def test_a_day_cannot_be_closed_before_it_begins(env):
    cal = calendar(env)
    tomorrow = cal.today() + dt.timedelta(days=1)
    with pytest.raises(q.UserError) as e:
        await close(env, tomorrow)
    assert e.value.status == 400 and "has not begun yet" in e.value.message


@pytest.mark.gen_test
async def test_a_simulated_day_matches_an_independent_recomputation(env):
    """Create, shuffle, complete through the API; close the day; compare everything."""
    manager = await env.api("manager")
    workers = [await env.api("worker", email=f"w{i}@popug.test") for i in range(4)]
    for i in range(16):
        assert (await manager.post("tracker", "/api/v1/tasks", json={"title": f"t{i}"})).status
    await manager.post("tracker", "/api/v1/tasks/shuffle")
    for w in workers[:3]:
        tasks = (await w.get("tracker", "/api/v1/tasks?assignee=me&status=open")).json()["tasks"]
        for t in tasks[: len(tasks) - 1]:
            assert (await w.post("tracker", f"/api/v1/tasks/{t['id']}/complete")).status == 200
    ledger = await env.db.fetch_all("SELECT * FROM core.ledger ORDER BY id")
    balance = defaultdict(Decimal)
    for e in ledger:
        balance[e.user_id] += e.amount
    fees = sum(-e.amount for e in ledger if e.kind == "fee")
    rewards = sum(e.amount for e in ledger if e.kind == "reward")
    await sync(env)
    accountant = await env.api("accountant")
    today = calendar(env).today()
    r = (await accountant.get("accounting", f"/api/v1/earnings?day={today}")).json()
    assert D(r["management_earnings"]) == fees - rewards
    assert r["tasks_assigned"] == sum(e.kind == "fee" for e in ledger)
    assert r["tasks_completed"] == sum(e.kind == "reward" for e in ledger)
    for w in workers:
        body = (await accountant.get("accounting", f"/api/v1/accounts/{w.user.id}")).json()
        assert D(body["balance"]) == balance[w.user.id]
        assert [e["id"] for e in body["entries"]] == [
            e.id for e in ledger if e.user_id == w.user.id
        ]

    rows = await close(env, today)  # closing the current day early, as the CLI may
    assert rows[0].early and rows[0].total_paid == sum(b for b in balance.values() if b > 0)
    notifier = Notifier(env.config, env.db)
    while (await notifier.deliver_due())[0]:
        pass
    payout_mails = [m for m in mails(env.config) if "Payout" in m["Subject"]]
    assert all("was closed early, at " in m.get_content() for m in payout_mails)
    paid_mail = {m["To"]: m["Subject"] for m in payout_mails}
    assert paid_mail == {
        f"w{i}@popug.test": f"Payout for {today}: {balance[w.user.id]:.2f}"
        for i, w in enumerate(workers)
        if balance[w.user.id] > 0
    }
    await sync(env)
    for w in workers:
        body = (await w.get("accounting", "/api/v1/accounts/me")).json()
        expected = min(balance[w.user.id], D("0.00"))  # paid out, or carried over
        assert D(body["balance"]) == expected and D(body["closing_balance"]) == expected
    r = (await accountant.get("accounting", f"/api/v1/earnings?day={today}")).json()
    assert D(r["payouts"]) == rows[0].total_paid and r["closed"] is True


@pytest.mark.gen_test
async def test_overview_and_accounts_pages_for_an_accountant(env):
    cal = calendar(env)
    worker = await env.api("worker", username="kiwi")
    yesterday = cal.today() - dt.timedelta(days=1)
    t = await add_task(env, worker.user, cal.starts(yesterday) + dt.timedelta(hours=5), fee="11.00")
    await complete(env, t, cal.starts(yesterday) + dt.timedelta(hours=6))
    await close(env, yesterday)
    await sync(env)
    browser = await env.browser("accountant")
    r = await browser.get("accounting", "/overview")
    assert r.status == 200
    assert f'id="day-{yesterday}"' in r.text and "<svg" in r.text and "19.00" in r.text
    r = await browser.get("accounting", "/accounts?q=kiw")
    assert r.status == 200 and "kiwi" in r.text
    r = await browser.get("accounting", f"/accounts/{worker.user.id}?day={yesterday}")
    assert r.status == 200 and "Payout for" in r.text and "Sort seeds" in r.text
    assert "Figures as of" in r.text
    # A day before the first close was paid by it; today has no "next".
    before = yesterday - dt.timedelta(days=1)
    r = await browser.get("accounting", f"/accounts/{worker.user.id}?day={before}")
    assert f"the first close ({yesterday}) paid out everything owed up to then" in r.text
    r = await browser.get("accounting", f"/overview?from={before}&to={yesterday}")
    assert "before the first close" in r.text.split(f'id="day-{before}"')[1].split("</tr>")[0]
    r = await browser.get("accounting", f"/accounts/{worker.user.id}")
    assert 'id="next-day"' not in r.text and 'id="prev-day"' in r.text


def test_close_day_command_pays_once_however_often_it_runs(db_dsn, tmp_path):
    import psycopg2

    env = {k: v for k, v in os.environ.items() if not k.startswith("POPUG_")}
    env.update(POPUG_DATABASE__DSN=db_dsn, POPUG_DATA_DIR=str(tmp_path / "var"))
    cmd = [sys.executable, str(REPO / "bin" / "popug"), "close-day"]

    def close_day(*args):
        r = subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert "the ledger has no entries yet" in close_day()
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.users (username, password_hash, role, email)"
            " VALUES ('kiwi', 'x', 'worker', 'kiwi@popug.test') RETURNING id"
        )
        kiwi = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO core.tasks (title, assignee_id, assign_fee, reward, created_by)"
            " VALUES ('New task', %s, 10, 25, %s) RETURNING id",
            (kiwi, kiwi),
        )
        cur.execute(
            "INSERT INTO core.ledger (user_id, task_id, kind, amount) VALUES (%s, %s, 'fee', -10)",
            (kiwi, cur.fetchone()[0]),
        )
    today = dt.datetime.now(UTC).date()
    assert f"the first entry is on {today}" in close_day()
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO core.tasks (title, assignee_id, assign_fee, reward, created_by,"
            " created_at, assigned_at, status, completed_at)"
            " VALUES ('Old task', %s, 10, 25, %s, now() - interval '2 days',"
            " now() - interval '2 days', 'done', now() - interval '2 days') RETURNING id",
            (kiwi, kiwi),
        )
        task = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at) VALUES"
            " (%s, %s, 'fee', -10, now() - interval '2 days'),"
            " (%s, %s, 'reward', 25, now() - interval '2 days')",
            (kiwi, task, kiwi, task),
        )
    # The first close pays everything owed up to the end of yesterday at once
    # (+15.00 from two days ago); today's fee is not in it.
    yesterday = today - dt.timedelta(days=1)
    assert close_day().splitlines() == [f"{yesterday} closed: 1 popug paid, 15.00 in total"]
    assert f"every day through {yesterday} is closed already" in close_day()
    bad = subprocess.run(
        cmd + ["--through", "2999-01-01"], env=env, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "--through must be between" in bad.stderr
    with psycopg2.connect(db_dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), sum(amount) FROM core.ledger WHERE kind = 'payout'")
        assert cur.fetchone() == (1, D("-15.00"))


def test_config_refuses_an_unknown_zone_and_a_bad_cutoff():
    from popug.common.config import ConfigError, load_config

    for env_var, value, words in [
        ("POPUG_ACCOUNTING__TIMEZONE", "Mars/Olympus", "an IANA time zone"),
        ("POPUG_ACCOUNTING__DAY_CUTOFF", "25:00", 'local time "HH:MM"'),
    ]:
        with pytest.raises(ConfigError) as e:
            load_config(None, environ={env_var: value})
        assert words in str(e.value)
    cfg = load_config(None, environ={"POPUG_ACCOUNTING__DAY_CUTOFF": "12:30"})
    assert cfg.accounting.day_cutoff == "12:30"


def test_links_in_emails_use_the_public_port_or_none_behind_a_proxy():
    from popug.common.config import load_config
    from popug.common.web import public_url

    assert public_url(load_config(None, environ={}), "accounting") == (
        "http://accounting.uberpopug.localhost:8888/"
    )
    behind_proxy = load_config(None, environ={"POPUG_SERVER__XHEADERS": "true"})
    assert public_url(behind_proxy, "accounting") == "http://accounting.uberpopug.localhost/"
    other_process = load_config(
        None,
        environ={
            "POPUG_SERVER__PORT": "8002",
            "POPUG_SERVER__PUBLIC_PORT": "8443",
            "POPUG_SERVER__PUBLIC_SCHEME": "https",
        },
    )
    assert public_url(other_process, "auth", "/x") == "https://auth.uberpopug.localhost:8443/x"


@pytest.mark.gen_test
async def test_a_day_the_zone_skipped_is_closed_empty_and_the_next_days_follow(env):
    # Samoa skipped 2011-12-30 when it moved across the date line.
    env.config.accounting["timezone"] = "Pacific/Apia"
    cal = calendar(env)
    assert cal.bounds(dt.date(2011, 12, 30))[0] == cal.bounds(dt.date(2011, 12, 30))[1]
    worker = await env.api("worker")
    day = dt.date(2011, 12, 29)
    t = await add_task(env, worker.user, cal.starts(day) + dt.timedelta(hours=2), fee="10.00")
    await close(env, day, now=cal.bounds(day)[1], cal=cal)
    await complete(env, t, cal.starts(dt.date(2011, 12, 31)) + dt.timedelta(hours=2))
    rows = await close(env, dt.date(2012, 1, 2), now=cal.bounds(dt.date(2012, 1, 2))[1], cal=cal)
    assert [(str(r.day), r.total_paid) for r in rows] == [
        ("2011-12-30", D("0.00")),
        ("2011-12-31", D("20.00")),
        ("2012-01-01", D("0.00")),
        ("2012-01-02", D("0.00")),
    ]


def test_a_zone_name_that_is_a_folder_is_a_config_error():
    from popug.common.config import ConfigError, load_config

    for name in ("America", "Etc", "x" * 300, "../../etc/passwd"):
        with pytest.raises(ConfigError):
            load_config(None, environ={"POPUG_ACCOUNTING__TIMEZONE": name})


@pytest.mark.gen_test
async def test_the_very_first_close_pays_the_history_in_one_payout(env):
    cal = calendar(env)
    worker = await env.api("worker")
    today = cal.today()
    for n in (5, 3, 1):
        day = today - dt.timedelta(days=n)
        t = await add_task(env, worker.user, cal.starts(day) + dt.timedelta(hours=1), fee="10.00")
        await complete(env, t, cal.starts(day) + dt.timedelta(hours=2))  # +20.00 net
    rows = await DayCloser(env.config, env.db).run_once()
    yesterday = today - dt.timedelta(days=1)
    assert [(r.day, r.total_paid) for r in rows] == [(yesterday, D("60.00"))]
    assert await payouts(env) == [(worker.user.id, yesterday, D("-60.00"))]


@pytest.mark.gen_test
async def test_what_comes_after_an_early_close_is_paid_by_the_next_close(env):
    cal = calendar(env)
    worker = await env.api("worker")
    day = dt.date(2026, 11, 12)
    starts, ends = cal.bounds(day)
    t1 = await add_task(env, worker.user, starts + dt.timedelta(hours=1), fee="10.00")
    await complete(env, t1, starts + dt.timedelta(hours=2))
    [early] = await close(env, day, now=starts + dt.timedelta(hours=3))
    assert early.early and early.total_paid == D("20.00")
    t2 = await add_task(env, worker.user, starts + dt.timedelta(hours=4), fee="12.00")
    await complete(env, t2, starts + dt.timedelta(hours=5))  # +18.00, after the close
    assert await close(env, day, now=ends + dt.timedelta(seconds=1)) == []  # closed once
    [next_day] = await close(env, day + dt.timedelta(days=1), now=ends + dt.timedelta(days=1))
    assert next_day.total_paid == D("18.00")
    assert await master_balance(env, worker.user.id) == 0
