"""Analytics: admin-only figures from the analytics replica, checked against a recomputation."""

import datetime as dt
import random
import re
from collections import defaultdict
from decimal import Decimal

import pytest

from popug.accounting import queries as accounting
from popug.common.days import BusinessCalendar, day_range
from tests.test_accounting import BERLIN, add_task, complete, sync

D = Decimal


def berlin(env):
    env.config.accounting["timezone"] = "Europe/Berlin"
    return BusinessCalendar.from_config(env.config)


async def seed_month(env, cal, first, last, seed=7):
    """Uneven days: none to eight tasks a day, some reassigned, most completed (some
    the next day), a few days closed; returns the workers."""
    rng = random.Random(seed)
    workers = [(await env.api("worker")).user for _ in range(5)]
    for day in day_range(first, last):
        starts, ends = cal.bounds(day)
        seconds = int((ends - starts).total_seconds())
        for _ in range(rng.choice([0, 0, 1, 2, 3, 5, 8])):
            at = starts + dt.timedelta(seconds=rng.randrange(seconds - 7200))
            worker = rng.choice(workers)
            fee = f"{rng.randint(1000, 2000) / 100:.2f}"
            reward = f"{rng.randint(2000, 4000) / 100:.2f}"
            task = await add_task(
                env, worker, at, fee=fee, reward=reward, title=f"t{day}-{at:%H%M}"
            )
            if rng.random() < 0.2:  # a shuffle gave it to someone else: a second fee
                other = rng.choice(workers)
                at += dt.timedelta(minutes=30)
                await env.db.run(
                    "UPDATE core.tasks SET assignee_id = %s, assigned_at = %s WHERE id = %s",
                    other.id,
                    at,
                    task,
                )
                await env.db.run(
                    "INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)"
                    " VALUES (%s, %s, 'fee', %s, %s)",
                    other.id,
                    task,
                    -D(fee),
                    at,
                )
            if rng.random() < 0.8:
                await complete(env, task, at + dt.timedelta(minutes=rng.randrange(60, 1800)))
        if rng.random() < 0.3:
            await accounting.close_days_through(
                env.db, cal, day, "test", "http://x/", now=cal.bounds(day)[1]
            )
    await sync_analytics(env)
    return workers


async def sync_analytics(env):
    await sync(env)  # one cycle fills both replicas


async def recompute(env, cal):
    """The figures, from the master ledger and tasks, with Python's Decimal and zoneinfo."""
    ledger = await env.db.fetch_all("SELECT * FROM core.ledger ORDER BY id")
    tasks = await env.db.fetch_all("SELECT * FROM core.tasks WHERE status = 'done'")

    def day_of(e):
        return e.day if e.kind == "payout" else cal.day_of(e.created_at)

    def earnings(day):
        # Fees are negative entries, rewards positive: fees charged - rewards credited.
        return sum(-e.amount for e in ledger if e.kind in ("fee", "reward") and day_of(e) == day)

    def negative(day):
        balance = defaultdict(Decimal)
        for e in ledger:
            if day_of(e) <= day:
                balance[e.user_id] += e.amount
        return sum(1 for b in balance.values() if b < 0)

    def top(first, last):
        done = [t for t in tasks if first <= cal.day_of(t.completed_at) <= last]
        if not done:
            return None
        best = min(done, key=lambda t: (-t.reward, t.completed_at, t.id))
        return best.id, f"{best.reward:.2f}"

    return earnings, negative, top


def api_top(period):
    return None if period["task"] is None else (period["task"]["id"], period["task"]["reward"])


@pytest.mark.gen_test(timeout=60)
async def test_figures_match_a_recomputation_for_a_seeded_month(env):
    cal = berlin(env)  # March 2026 in Berlin has its DST change on the 29th
    first, last = dt.date(2026, 3, 1), dt.date(2026, 3, 31)
    await seed_month(env, cal, first, last)
    earnings, negative, top = await recompute(env, cal)
    month = day_range(first, last)
    # The seed is uneven enough to test something: quiet days, busy days, popugs
    # going negative and back, losing days for management, closed days.
    assert any(top(d, d) is None for d in month) and any(top(d, d) for d in month)
    assert len({negative(d) for d in month}) > 2
    assert any(earnings(d) < 0 for d in month) and any(earnings(d) > 0 for d in month)
    assert await env.scalar("SELECT count(*) FROM core.closed_days") > 3
    admin = await env.api("admin")
    for day in day_range(first, last):
        r = (await admin.get("analytics", f"/api/v1/summary?day={day}")).json()
        assert D(r["management_earnings"]) == earnings(day), day
        assert r["negative_balance_popugs"] == negative(day), day
    q = f"from={first}&to={last}"
    days = (await admin.get("analytics", f"/api/v1/most-expensive?period=day&{q}")).json()
    assert [p["from"] for p in days["periods"]] == [str(d) for d in day_range(first, last)]
    for p in days["periods"]:
        d = dt.date.fromisoformat(p["from"])
        assert api_top(p) == top(d, d), d
        if p["task"] is None:
            assert p["text"] == f"{d:%d.%m} — no completed task"
        else:
            assert p["text"] == (
                f"{d:%d.%m} — most expensive task — {p['task']['reward']} ({p['task']['title']})"
            )
    weeks = (await admin.get("analytics", f"/api/v1/most-expensive?period=week&{q}")).json()
    spans = [(p["from"], p["to"]) for p in weeks["periods"]]
    assert spans[0] == ("2026-03-01", "2026-03-01")  # a Sunday: its week is cut to the range
    assert spans[1] == ("2026-03-02", "2026-03-08") and spans[-1] == ("2026-03-30", "2026-03-31")
    for p in weeks["periods"]:
        a, b = dt.date.fromisoformat(p["from"]), dt.date.fromisoformat(p["to"])
        assert a.weekday() == 0 or a == first
        assert api_top(p) == top(a, b)
    month = (await admin.get("analytics", f"/api/v1/most-expensive?period=month&{q}")).json()
    assert [(p["label"], api_top(p)) for p in month["periods"]] == [
        ("March 2026", top(first, last))
    ]
    assert api_top({"task": month["overall"]}) == top(first, last)
    # The page's day-by-day table, negative counts included, says the same.
    page = await (await env.browser("admin")).get("analytics", f"/?{q}")
    assert page.status == 200
    for day in day_range(first, last):
        row = page.text.split(f'id="day-{day}"')[1].split("</tr>")[0]
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        assert D(cells[1].replace(",", "")) == earnings(day)
        assert int(cells[4]) == negative(day), day


@pytest.mark.gen_test
async def test_a_month_period_is_a_calendar_month_and_weeks_start_on_monday(env):
    berlin(env)
    worker = (await env.api("worker")).user
    cases = [
        # (completed at, Berlin) -> which month / week it must count in
        (dt.datetime(2026, 2, 28, 23, 30, tzinfo=BERLIN), "30.00"),
        (dt.datetime(2026, 3, 1, 0, 10, tzinfo=BERLIN), "31.00"),
        (dt.datetime(2026, 3, 8, 23, 59, tzinfo=BERLIN), "32.00"),  # Sunday
        (dt.datetime(2026, 3, 9, 0, 0, tzinfo=BERLIN), "33.00"),  # Monday
    ]
    ids = []
    for at, reward in cases:
        t = await add_task(env, worker, at - dt.timedelta(hours=1), reward=reward, title=reward)
        await complete(env, t, at)
        ids.append(t)
    await sync_analytics(env)
    admin = await env.api("admin")
    r = await admin.get(
        "analytics", "/api/v1/most-expensive?period=month&from=2026-01-15&to=2026-03-10"
    )
    months = r.json()["periods"]
    assert [(p["label"], p["from"], p["to"]) for p in months] == [
        ("January 2026 (15.01–31.01)", "2026-01-15", "2026-01-31"),
        ("February 2026", "2026-02-01", "2026-02-28"),
        ("March 2026 (01.03–10.03)", "2026-03-01", "2026-03-10"),
    ]
    assert [api_top(p) for p in months] == [None, (ids[0], "30.00"), (ids[3], "33.00")]
    assert months[0]["text"] == "January 2026 (15.01–31.01) — no completed task"
    r = await admin.get(
        "analytics", "/api/v1/most-expensive?period=week&from=2026-03-02&to=2026-03-15"
    )
    weeks = r.json()["periods"]
    assert [(p["label"], api_top(p)) for p in weeks] == [
        ("02.03–08.03", (ids[2], "32.00")),
        ("09.03–15.03", (ids[3], "33.00")),
    ]


@pytest.mark.gen_test
async def test_a_dst_day_in_berlin_has_its_late_entries(env):
    cal = berlin(env)
    worker = (await env.api("worker")).user
    day = dt.date(2026, 3, 29)  # 23 hours
    late = dt.datetime(2026, 3, 29, 23, 30, tzinfo=BERLIN)
    t = await add_task(env, worker, dt.datetime(2026, 3, 29, 0, 30, tzinfo=BERLIN), fee="10.00")
    await complete(env, t, late)
    after = await add_task(env, worker, late + dt.timedelta(minutes=31), fee="19.00")
    assert cal.day_of(late + dt.timedelta(minutes=31)) == day + dt.timedelta(days=1) and after
    await sync_analytics(env)
    admin = await env.api("admin")
    r = (await admin.get("analytics", f"/api/v1/summary?day={day}")).json()
    assert (r["fees_charged"], r["rewards_credited"], r["management_earnings"]) == (
        "10.00",
        "30.00",
        "-20.00",
    )
    assert r["negative_balance_popugs"] == 0
    nxt = (await admin.get("analytics", f"/api/v1/summary?day={day + dt.timedelta(days=1)}")).json()
    assert nxt["management_earnings"] == "19.00"
    top = await admin.get("analytics", f"/api/v1/most-expensive?from={day}&to={day}")
    assert api_top(top.json()["periods"][0]) == (t, "30.00")


@pytest.mark.gen_test
async def test_an_empty_range_says_so_everywhere(env):
    await sync_analytics(env)
    admin = await env.api("admin")
    r = (
        await admin.get(
            "analytics", "/api/v1/most-expensive?period=week&from=2025-01-01&to=2025-01-31"
        )
    ).json()
    assert r["overall"] is None and all(p["task"] is None for p in r["periods"])
    assert r["periods"][0]["text"] == "01.01–05.01 — no completed task"
    s = (await admin.get("analytics", "/api/v1/summary?day=2025-01-01")).json()
    assert (s["management_earnings"], s["negative_balance_popugs"]) == ("0.00", 0)
    page = await (await env.browser("admin")).get("analytics", "/?from=2025-01-01&to=2025-01-31")
    assert page.status == 200 and "no task was completed in this range" in page.text
    assert "31.01 — no completed task" in page.text


@pytest.mark.gen_test
async def test_only_admins_see_analytics(env):
    await sync_analytics(env)
    for role in ("worker", "manager", "accountant"):
        api = await env.api(role)
        for path in ("/api/v1/summary", "/api/v1/most-expensive?period=day"):
            r = await api.get("analytics", path)
            assert r.status == 403 and "not allowed to see analytics" in r.json()["error"], role
        page = await (await env.browser(role)).get("analytics", "/")
        assert page.status == 403 and "not allowed to see analytics" in page.text
    assert (await (await env.api("admin")).get("analytics", "/api/v1/summary")).status == 200
    assert (await (await env.browser("admin")).get("analytics", "/")).status == 200


@pytest.mark.gen_test
async def test_bad_ranges_and_periods_are_clear_400s(env):
    await sync_analytics(env)
    admin = await env.api("admin")
    for path, words in [
        ("/api/v1/most-expensive?from=2026-03-02&to=2026-03-01", "is after to"),
        ("/api/v1/most-expensive?from=2026-3-1", "must be a date YYYY-MM-DD"),
        ("/api/v1/most-expensive?period=year", "period must be one of day, week, month"),
        ("/api/v1/most-expensive?from=2024-01-01&to=2026-01-01", "at most 366 days"),
        ("/api/v1/summary?day=2026-02-29", "not a date in the calendar"),
    ]:
        r = await admin.get("analytics", path)
        assert r.status == 400 and words in r.json()["error"], (path, r)
    page = await (await env.browser("admin")).get("analytics", "/?from=x")
    assert page.status == 400 and "must be a date YYYY-MM-DD" in page.text


@pytest.mark.gen_test
async def test_before_the_first_replication_analytics_says_so(env):
    r = await (await env.api("admin")).get("analytics", "/api/v1/summary")
    assert r.status == 503 and "analytics data is not replicated yet" in r.json()["error"]


def test_a_count_chart_has_whole_gridlines_and_labels_the_latest_day():
    from popug.common.charts import bar_chart

    points = [(f"{d:02d}.03", n) for d, n in zip(range(1, 31), [0] * 27 + [1, 3, 2], strict=True)]
    svg = bar_chart(points, "Popugs in the negative", money=False)
    gridlines = re.findall(r'text-anchor="end">([^<]*)<', svg)
    assert gridlines == ["0", "1", "2", "3"]
    assert ">30.03</text>" in svg and "<title>30.03: 2</title>" in svg
    hostile = bar_chart([("<script>", 5)], "a </title><script>")
    assert "<script>" not in hostile


def test_a_money_chart_over_one_cent_has_no_two_equal_gridlines():
    from popug.common.charts import bar_chart

    svg = bar_chart([("01.03", D("0.01")), ("02.03", D("0.00"))], "Earnings")
    gridlines = re.findall(r'text-anchor="end">([^<]*)<', svg)
    assert gridlines == ["0.00", "0.01"]
