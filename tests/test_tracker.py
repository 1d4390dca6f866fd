"""Tracker: create, shuffle, complete, list; permissions per role; races; bad input."""

import asyncio
import re
from decimal import Decimal

import pytest

from tests.conftest import Api


async def ledger(env, task_id):
    return await env.db.fetch_all(
        "SELECT user_id, kind, amount FROM core.ledger WHERE task_id = %s ORDER BY id", task_id
    )


@pytest.mark.gen_test
async def test_manager_creates_a_task_assigned_to_a_random_worker_with_fixed_prices(env):
    manager = await env.api("manager")
    workers = [await env.user("worker") for _ in range(3)]
    accountant = await env.user("accountant")
    await env.user("admin")  # admins and managers never get tasks
    assignable = {w.id for w in workers} | {accountant.id}
    seen = set()
    for i in range(40):
        r = await manager.post(
            "tracker",
            "/api/v1/tasks",
            json={"title": f"Feed the parrots {i}", "description": "seeds"},
        )
        assert r.status == 201, r
        t = r.json()
        assert t["status"] == "open" and t["completed_at"] is None
        assert t["title"] == f"Feed the parrots {i}" and t["description"] == "seeds"
        assert t["assignee"]["id"] in assignable
        seen.add(t["assignee"]["id"])
        fee, reward = Decimal(t["assign_fee"]), Decimal(t["reward"])
        assert re.fullmatch(r"\d+\.\d\d", t["assign_fee"]) and re.fullmatch(
            r"\d+\.\d\d", t["reward"]
        )
        assert Decimal("10.00") <= fee <= Decimal("20.00")
        assert Decimal("20.00") <= reward <= Decimal("40.00")
        assert "+" in t["created_at"] or t["created_at"].endswith("Z")
        assert await ledger(env, t["id"]) == [
            {"user_id": t["assignee"]["id"], "kind": "fee", "amount": -fee}
        ]
    # 40 draws over 4 popugs: all of them get something (p(miss) < 4 * 0.75^40 ≈ 4e-5).
    assert seen == assignable


@pytest.mark.gen_test
async def test_inactive_popugs_get_no_tasks(env):
    manager = await env.api("manager")
    active = await env.user("worker")
    gone = await env.user("worker")
    await env.db.run("UPDATE core.users SET active = false WHERE id = %s", gone.id)
    for _ in range(15):
        r = await manager.post("tracker", "/api/v1/tasks", json={"title": "t"})
        assert r.json()["assignee"]["id"] == active.id
    r = await manager.post("tracker", "/api/v1/tasks/shuffle")
    assert r.json()["reassigned"] == 15
    assert (
        await env.scalar("SELECT count(*) FROM core.tasks WHERE assignee_id <> %s", active.id) == 0
    )


@pytest.mark.gen_test
async def test_no_assignable_popug_is_a_clear_409_and_writes_nothing(env):
    manager = await env.api("manager")
    r = await manager.post("tracker", "/api/v1/tasks", json={"title": "lonely"})
    assert r.status == 409
    assert "No popug can receive tasks" in r.json()["error"]
    assert await env.scalar("SELECT count(*) FROM core.tasks") == 0
    assert await env.scalar("SELECT count(*) FROM core.ledger") == 0
    r = await manager.post("tracker", "/api/v1/tasks/shuffle")
    assert r.status == 409


@pytest.mark.gen_test
async def test_shuffle_reassigns_every_open_task_and_charges_each_fee_again(env):
    manager = await env.api("manager")
    workers = [await env.user("worker") for _ in range(4)]
    tasks = [
        (await manager.post("tracker", "/api/v1/tasks", json={"title": f"t{i}"})).json()
        for i in range(30)
    ]
    done = tasks[0]
    w = Api(env, await env.token_for(done["assignee"]["username"]))
    assert (await w.post("tracker", f"/api/v1/tasks/{done['id']}/complete")).status == 200
    before = {
        t.id: t.assignee_id
        for t in await env.db.fetch_all("SELECT id, assignee_id FROM core.tasks")
    }
    r = await manager.post("tracker", "/api/v1/tasks/shuffle")
    assert r.status == 200 and r.json()["reassigned"] == 29
    after = {
        t.id: t.assignee_id
        for t in await env.db.fetch_all("SELECT id, assignee_id FROM core.tasks")
    }
    assert after[done["id"]] == before[done["id"]]  # a done task stays where it was
    assert set(after.values()) <= {x.id for x in workers}
    assert r.json()["changed_assignee"] == sum(after[i] != before[i] for i in after)
    assert any(after[i] != before[i] for i in after)
    for t in tasks[1:]:
        entries = await ledger(env, t["id"])
        fee = -Decimal(t["assign_fee"])
        assert [e.kind for e in entries] == ["fee", "fee"]
        assert [e.amount for e in entries] == [fee, fee]
        assert entries[1].user_id == after[t["id"]]
    assert [e.kind for e in await ledger(env, done["id"])] == ["fee", "reward"]


@pytest.mark.gen_test
async def test_shuffle_spreads_tasks_over_all_popugs(env):
    manager = await env.api("manager")
    workers = [await env.user("worker") for _ in range(3)]
    for i in range(60):
        await manager.post("tracker", "/api/v1/tasks", json={"title": f"t{i}"})
    await manager.post("tracker", "/api/v1/tasks/shuffle")
    counts = await env.db.fetch_all(
        "SELECT assignee_id, count(*) AS n FROM core.tasks GROUP BY assignee_id"
    )
    # Each task drew its own assignee (not one draw for the whole shuffle).
    assert {c.assignee_id for c in counts} == {w.id for w in workers}


@pytest.mark.gen_test
async def test_worker_sees_and_completes_only_their_own_tasks(env):
    manager = await env.api("manager")
    alice = await env.api("worker")
    bob = await env.api("worker")
    ids = [
        (await manager.post("tracker", "/api/v1/tasks", json={"title": f"t{i}"})).json()
        for i in range(12)
    ]
    mine = [t for t in ids if t["assignee"]["id"] == alice.user.id]
    theirs = [t for t in ids if t["assignee"]["id"] == bob.user.id]
    assert mine and theirs
    r = await alice.get("tracker", "/api/v1/tasks?assignee=me&status=open")
    assert sorted(t["id"] for t in r.json()["tasks"]) == sorted(t["id"] for t in mine)
    # Without filters a worker still gets only their own.
    r = await alice.get("tracker", "/api/v1/tasks")
    assert {t["assignee"]["id"] for t in r.json()["tasks"]} == {alice.user.id}
    # Asking for someone else's list is not allowed.
    r = await alice.get("tracker", f"/api/v1/tasks?assignee={bob.user.id}")
    assert r.status == 403
    r = await alice.get("tracker", f"/api/v1/tasks/{theirs[0]['id']}")
    assert r.status == 403
    # Completing someone else's task: 403, nothing credited.
    r = await alice.post("tracker", f"/api/v1/tasks/{theirs[0]['id']}/complete")
    assert r.status == 403 and "not assigned to you" in r.json()["error"]
    # Completing one's own: 200, done, reward credited once.
    t = mine[0]
    r = await alice.post("tracker", f"/api/v1/tasks/{t['id']}/complete")
    assert r.status == 200
    body = r.json()
    assert body["status"] == "done" and body["completed_at"]
    assert await ledger(env, t["id"]) == [
        {"user_id": alice.user.id, "kind": "fee", "amount": -Decimal(t["assign_fee"])},
        {"user_id": alice.user.id, "kind": "reward", "amount": Decimal(t["reward"])},
    ]
    r = await alice.post("tracker", f"/api/v1/tasks/{t['id']}/complete")
    assert r.status == 409 and "already completed" in r.json()["error"]
    r = await alice.get("tracker", "/api/v1/tasks?assignee=me&status=done")
    assert [x["id"] for x in r.json()["tasks"]] == [t["id"]]


@pytest.mark.gen_test
async def test_worker_and_accountant_cannot_create_or_shuffle(env):
    for role in ("worker", "accountant"):
        api = await env.api(role)
        r = await api.post("tracker", "/api/v1/tasks", json={"title": "sneaky"})
        assert r.status == 403 and "not allowed to create tasks" in r.json()["error"]
        r = await api.post("tracker", "/api/v1/tasks/shuffle")
        assert r.status == 403 and "not allowed to shuffle tasks" in r.json()["error"]
    assert await env.scalar("SELECT count(*) FROM core.tasks") == 0


@pytest.mark.gen_test
async def test_admin_can_create_and_shuffle(env):
    admin = await env.api("admin")
    await env.user("worker")
    assert (await admin.post("tracker", "/api/v1/tasks", json={"title": "a"})).status == 201
    assert (await admin.post("tracker", "/api/v1/tasks/shuffle")).json()["reassigned"] == 1


@pytest.mark.gen_test
async def test_two_concurrent_completes_give_one_200_one_409_and_one_credit(env):
    manager = await env.api("manager")
    worker = await env.api("worker")
    for _ in range(5):
        t = (await manager.post("tracker", "/api/v1/tasks", json={"title": "race"})).json()
        results = await asyncio.gather(
            worker.post("tracker", f"/api/v1/tasks/{t['id']}/complete"),
            worker.post("tracker", f"/api/v1/tasks/{t['id']}/complete"),
        )
        assert sorted(r.status for r in results) == [200, 409]
        assert (
            await env.scalar(
                "SELECT count(*) FROM core.ledger WHERE task_id = %s AND kind = 'reward'", t["id"]
            )
            == 1
        )


@pytest.mark.gen_test
async def test_reassigned_task_cannot_be_completed_by_its_old_assignee(env):
    manager = await env.api("manager")
    alice = await env.api("worker")
    await env.user("worker")
    t = (await manager.post("tracker", "/api/v1/tasks", json={"title": "moving"})).json()
    # Shuffle until the task leaves its first assignee (a fair coin each time).
    first = t["assignee"]["id"]
    for _ in range(60):
        await manager.post("tracker", "/api/v1/tasks/shuffle")
        now = await env.scalar("SELECT assignee_id FROM core.tasks WHERE id = %s", t["id"])
        if now != first and first == alice.user.id:
            break
        if now == alice.user.id and first != alice.user.id:
            first = alice.user.id  # alice had it at some point: now wait for it to leave
    assert first == alice.user.id and now != alice.user.id
    r = await alice.post("tracker", f"/api/v1/tasks/{t['id']}/complete")
    assert r.status == 409
    assert "was reassigned" in r.json()["error"] and "by a shuffle" in r.json()["error"]
    assert (
        await env.scalar(
            "SELECT count(*) FROM core.ledger WHERE task_id = %s AND kind = 'reward'", t["id"]
        )
        == 0
    )


@pytest.mark.gen_test
async def test_complete_racing_a_shuffle_never_pays_a_reassigned_task(env):
    manager = await env.api("manager")
    workers = [await env.api("worker") for _ in range(3)]
    by_id = {w.user.id: w for w in workers}
    tasks = [
        (await manager.post("tracker", "/api/v1/tasks", json={"title": f"r{i}"})).json()
        for i in range(30)
    ]
    completes = [
        by_id[t["assignee"]["id"]].post("tracker", f"/api/v1/tasks/{t['id']}/complete")
        for t in tasks
    ]
    results = await asyncio.gather(manager.post("tracker", "/api/v1/tasks/shuffle"), *completes)
    assert results[0].status == 200
    assert {r.status for r in results[1:]} <= {200, 409}
    # Every done task was rewarded exactly once, to the popug who held it at completion;
    # every open task's last fee is charged to its current assignee.
    rows = await env.db.fetch_all(
        "SELECT t.id, t.status, t.assignee_id,"
        " (SELECT count(*) FROM core.ledger l"
        "   WHERE l.task_id = t.id AND l.kind = 'reward') AS rewards,"
        " (SELECT user_id FROM core.ledger l WHERE l.task_id = t.id AND l.kind = 'reward') AS paid,"
        " (SELECT user_id FROM core.ledger l WHERE l.task_id = t.id AND l.kind = 'fee'"
        "   ORDER BY id DESC LIMIT 1) AS last_fee_to FROM core.tasks t"
    )
    for row in rows:
        assert row.last_fee_to == row.assignee_id
        if row.status == "done":
            assert row.rewards == 1 and row.paid == row.assignee_id
        else:
            assert row.rewards == 0


@pytest.mark.gen_test
async def test_list_filters_for_managers(env):
    manager = await env.api("manager")
    alice = await env.api("worker")
    await env.user("worker")
    tasks = [
        (await manager.post("tracker", "/api/v1/tasks", json={"title": f"t{i}"})).json()
        for i in range(10)
    ]
    alice_tasks = [t for t in tasks if t["assignee"]["id"] == alice.user.id]
    await alice.post("tracker", f"/api/v1/tasks/{alice_tasks[0]['id']}/complete")
    r = await manager.get("tracker", "/api/v1/tasks")
    assert len(r.json()["tasks"]) == 10
    r = await manager.get("tracker", f"/api/v1/tasks?assignee={alice.user.id}&status=done")
    assert [t["id"] for t in r.json()["tasks"]] == [alice_tasks[0]["id"]]
    r = await manager.get("tracker", "/api/v1/tasks?status=open")
    assert len(r.json()["tasks"]) == 9
    r = await manager.get("tracker", "/api/v1/tasks?limit=3")
    page = r.json()["tasks"]
    assert [t["id"] for t in page] == sorted((t["id"] for t in tasks), reverse=True)[:3]
    r = await manager.get("tracker", f"/api/v1/tasks?limit=3&before={page[-1]['id']}")
    assert [t["id"] for t in r.json()["tasks"]] == sorted((t["id"] for t in tasks), reverse=True)[
        3:6
    ]


BAD_TASKS = [
    ({}, "title is required"),
    ({"title": ""}, "title is required"),
    ({"title": "   "}, "title is required"),
    ({"title": "x" * 201}, "title is too long: 201 characters, at most 200"),
    ({"title": "ok", "description": "d" * 5001}, "description is too long"),
    ({"title": "nul\x00byte"}, "title must not contain NUL"),
    ({"title": "ok", "description": "nul\x00"}, "description must not contain NUL"),
    ({"title": 42}, "title must be a string"),
    ({"title": None}, "title is required"),
    ({"title": "ok", "description": ["x"]}, "description must be a string"),
    ({"title": "ok", "assignee": 1}, "unknown field 'assignee'"),
]


@pytest.mark.gen_test
@pytest.mark.parametrize("body, message", BAD_TASKS)
async def test_bad_task_input_is_a_clear_400_and_writes_nothing(env, body, message):
    manager = await env.api("manager")
    await env.user("worker")
    r = await manager.post("tracker", "/api/v1/tasks", json=body)
    assert r.status == 400, r
    assert message in r.json()["error"]
    assert await env.scalar("SELECT count(*) FROM core.tasks") == 0
    assert await env.scalar("SELECT count(*) FROM core.ledger") == 0


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"title"', "must be a JSON object"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b'{"title": "a"', "not valid JSON"),
    ],
)
async def test_body_that_is_not_a_json_object(env, raw, message):
    manager = await env.api("manager")
    r = await manager.call(
        "POST", "tracker", "/api/v1/tasks", body=raw, headers={"Content-Type": "application/json"}
    )
    assert r.status == 400 and message in r.json()["error"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/tasks/abc/complete",
        "/api/v1/tasks/-1/complete",
        "/api/v1/tasks/1.5/complete",
        "/api/v1/tasks/%C2%B2/complete",
        "/api/v1/tasks/99999999999999999999/complete",
    ],
)
async def test_non_numeric_task_ids(env, path):
    worker = await env.api("worker")
    r = await worker.post("tracker", path)
    assert r.status == 400 and "task id" in r.json()["error"]


@pytest.mark.gen_test
async def test_missing_task_is_404(env):
    worker = await env.api("worker")
    r = await worker.post("tracker", "/api/v1/tasks/424242/complete")
    assert r.status == 404 and "no task #424242" in r.json()["error"]


@pytest.mark.gen_test
@pytest.mark.parametrize(
    "query, message",
    [
        ("status=closed", "status must be one of open, done"),
        ("assignee=bob", "assignee must be a positive whole number"),
        ("limit=0", "limit must be"),
        ("limit=5000", "limit is at most 1000"),
        ("before=x", "before must be"),
    ],
)
async def test_bad_list_filters(env, query, message):
    manager = await env.api("manager")
    r = await manager.get("tracker", "/api/v1/tasks?" + query)
    assert r.status == 400 and message in r.json()["error"]


@pytest.mark.gen_test
async def test_hostile_text_is_stored_and_shown_exactly_and_escaped(env):
    manager = await env.api("manager")
    worker = await env.user("worker")
    title = "<script>alert('x')</script> \t tab \\n \\. 🦜 ünïcödé"
    description = "line1\nline2\r\n\\.\n<b>bold</b>"
    r = await manager.post(
        "tracker", "/api/v1/tasks", json={"title": title, "description": description}
    )
    t = r.json()
    assert (t["title"], t["description"]) == (title.strip(), description)
    from tests.conftest import Browser

    b = Browser(env)
    await b.login(worker.username, env.PASSWORD)
    page = (await b.get("tracker", "/")).text
    assert "<script>alert" not in page and "&lt;script&gt;alert" in page
    assert "🦜 ünïcödé" in page


# --- pages ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_pages_manager_creates_and_shuffles_worker_completes(env):
    manager = await env.browser("manager")
    worker = await env.browser("worker")
    r = await manager.get("tracker", "/tasks/new")
    assert r.status == 200 and 'name="title"' in r.text
    r = await manager.post(
        "tracker", "/tasks", form={"title": "Polish the perch", "description": "both sides"}
    )
    assert r.status == 200 and "Created task #" in r.text and "Polish the perch" in r.text
    assert worker.user.username in r.text
    task_id = await env.scalar("SELECT id FROM core.tasks")
    r = await manager.post("tracker", "/tasks/shuffle", form={})
    assert r.status == 200 and "Shuffled: 1 open task reassigned, 0 to a different popug" in r.text
    r = await worker.get("tracker", "/")
    assert "Polish the perch" in r.text and f"/tasks/{task_id}/complete" in r.text
    assert 'id="nav-new"' not in r.text and 'id="shuffle"' not in r.text
    r = await worker.post("tracker", f"/tasks/{task_id}/complete", form={})
    assert r.status == 200 and "Done: #" in r.text and "credited" in r.text
    assert "Nothing to do" in r.text
    r = await worker.post("tracker", f"/tasks/{task_id}/complete", form={})
    assert "already completed" in r.text


@pytest.mark.gen_test
async def test_pages_bad_form_is_reshown_with_the_error(env):
    manager = await env.browser("manager")
    await env.user("worker")
    r = await manager.post("tracker", "/tasks", form={"title": "", "description": "keep me"})
    assert r.status == 400
    assert "Title is required." in r.text and "keep me" in r.text
    r = await manager.post("tracker", "/tasks", form={"title": "x" * 300})
    assert r.status == 400 and "at most 200" in r.text
    assert await env.scalar("SELECT count(*) FROM core.tasks") == 0


@pytest.mark.gen_test
async def test_pages_worker_gets_403_on_create_and_shuffle(env):
    worker = await env.browser("worker")
    for method, path in (
        ("GET", "/tasks/new"),
        ("POST", "/tasks"),
        ("POST", "/tasks/shuffle"),
        ("GET", "/tasks"),
    ):
        r = await worker.request(
            method, worker.url("tracker", path), form={"title": "x"} if method == "POST" else None
        )
        assert r.status == 403, (method, path)
        assert "Not allowed" in r.text and "Traceback" not in r.text


@pytest.mark.gen_test
async def test_pages_filters_for_managers(env):
    manager = await env.browser("manager")
    api = await env.api("manager")
    w = await env.user("worker", username="zazu")
    for i in range(3):
        await api.post("tracker", "/api/v1/tasks", json={"title": f"filter-me-{i}"})
    r = await manager.get("tracker", f"/tasks?status=all&assignee={w.id}")
    assert r.status == 200 and r.text.count("filter-me-") == 3
    r = await manager.get("tracker", "/tasks?status=done")
    assert "No task matches" in r.text
    r = await manager.get("tracker", "/tasks?status=nonsense")
    assert r.status == 400 and "Status must be one of" in r.text


@pytest.mark.gen_test
async def test_pages_redirect_to_login_and_back(env):
    from tests.conftest import Browser

    b = Browser(env)
    r = await b.get("tracker", "/tasks?status=open", follow=False)
    assert r.status == 302
    assert r.location.startswith(b.url("auth", "/login?next="))
    # A form posted without a session: back to login, no 500.
    r = await b.post("tracker", "/tasks", form={"title": "x"}, follow=False)
    assert r.status == 302 and "/login?next=" in r.location


@pytest.mark.gen_test
async def test_a_listed_task_is_the_same_object_as_the_created_and_completed_one(env):
    manager = await env.api("manager")
    worker = await env.api("worker")
    created = (
        await manager.post(
            "tracker", "/api/v1/tasks", json={"title": "Same 🦜", "description": "a\tb\\n"}
        )
    ).json()
    listed = (await worker.get("tracker", "/api/v1/tasks?assignee=me")).json()["tasks"]
    assert listed == [created]
    assert (await worker.get("tracker", f"/api/v1/tasks/{created['id']}")).json() == created
    done = (await worker.post("tracker", f"/api/v1/tasks/{created['id']}/complete")).json()
    listed = (await worker.get("tracker", "/api/v1/tasks?status=done")).json()["tasks"]
    assert listed == [done] and done["completed_at"]


# --- regressions from hostile testing ------------------------------------------------


@pytest.mark.gen_test
async def test_huge_numbers_in_ids_and_filters_are_400(env):
    manager = await env.api("manager")
    huge = "9" * 5000
    for path in (
        f"/api/v1/tasks/{huge}",
        f"/api/v1/tasks?limit={huge}",
        f"/api/v1/tasks?before={huge}",
        f"/api/v1/tasks?assignee={huge}",
    ):
        r = await manager.get("tracker", path)
        assert r.status == 400 and "out of range" in r.json()["error"], path
    r = await manager.post("tracker", f"/api/v1/tasks/{huge}/complete")
    assert r.status == 400


@pytest.mark.gen_test
async def test_lone_surrogates_and_deep_nesting_are_400(env):
    manager = await env.api("manager")
    await env.user("worker")
    for raw in (
        b'{"title": "\\ud800"}',
        b'{"title": "ok", "description": "\\udfff"}',
        b'{"title": ' + b"[" * 50000 + b"]" * 50000 + b"}",
    ):
        r = await manager.call(
            "POST",
            "tracker",
            "/api/v1/tasks",
            body=raw,
            headers={"Content-Type": "application/json"},
        )
        assert r.status == 400, r
    assert await env.scalar("SELECT count(*) FROM core.tasks") == 0


@pytest.mark.gen_test
async def test_concurrent_shuffles_take_turns_instead_of_deadlocking(env):
    manager = await env.api("manager")
    workers = [await env.api("worker") for _ in range(3)]
    by_id = {w.user.id: w for w in workers}
    tasks = [
        (await manager.post("tracker", "/api/v1/tasks", json={"title": f"d{i}"})).json()
        for i in range(60)
    ]
    calls = [manager.post("tracker", "/api/v1/tasks/shuffle") for _ in range(6)]
    calls += [
        by_id[t["assignee"]["id"]].post("tracker", f"/api/v1/tasks/{t['id']}/complete")
        for t in tasks[:20]
    ]
    calls += [manager.post("tracker", "/api/v1/tasks", json={"title": "new"}) for _ in range(5)]
    results = await asyncio.gather(*calls)
    assert all(r.status == 200 for r in results[:6]), [r.status for r in results[:6]]
    assert all(r.status in (200, 201, 409) for r in results)
    fees = await env.scalar("SELECT count(*) FROM core.ledger WHERE kind = 'fee'")
    reassigned = sum(r.json()["reassigned"] for r in results[:6])
    assert fees == 65 + reassigned


@pytest.mark.gen_test
async def test_head_healthz_and_oversized_bodies(env):
    from tests.conftest import Browser

    b = Browser(env)
    r = await b.request("HEAD", b.url("tracker", "/healthz"))
    assert r.status == 200
    manager = await env.api("manager")
    r = await manager.call(
        "POST",
        "tracker",
        "/api/v1/tasks",
        body=b"x" * (2 * 1024 * 1024),
        headers={"Content-Type": "application/json"},
    )
    assert r.status in (400, 413)
