"""Notifier: the outbox into a maildir or over real SMTP (aiosmtpd), retries, admin page."""

import asyncio
import copy
import email
import email.policy
import socket
import threading
import time
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller

from popug.notifier.service import Notifier
from tests.conftest import Browser


def mails(config):
    folder = Path(config.data_dir) / "mail" / "new"
    files = sorted(folder.iterdir()) if folder.exists() else []
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]


def smtp_config(config, port, **smtp):
    cfg = copy.deepcopy(config)
    cfg.notifier["transport"] = "smtp"
    cfg.notifier.smtp.update(host="127.0.0.1", port=port, timeout_s=1, **smtp)
    return cfg


class Inbox:
    """aiosmtpd handler: keeps every message the server accepted."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((envelope.rcpt_tos, msg))
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        inbox.port = s.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture
def silent_smtp_server():
    """Accepts connections and never says a word (no greeting): a stalled server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    held = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1]
    stop.set()
    t.join()
    for c in held:
        c.close()
    sock.close()


async def outbox(env):
    return await env.db.fetch_all("SELECT * FROM core.outbox ORDER BY id")


@pytest.mark.gen_test
async def test_assigned_task_lands_in_the_maildir_once(env):
    manager = await env.api("manager")
    worker = await env.user("worker", email="kiwi@popug.test")
    title = "Polish the perch 🦜\nBcc: evil@example.com"
    r = await manager.post(
        "tracker", "/api/v1/tasks", json={"title": title, "description": "Both sides.\n\\. ok"}
    )
    task = r.json()
    [row] = await outbox(env)
    assert (row.kind, row.recipient, row.state) == ("task_assigned", "kiwi@popug.test", "pending")
    notifier = Notifier(env.config, env.db)
    assert await notifier.deliver_due() == (1, 0)
    assert await notifier.deliver_due() == (0, 0)
    [msg] = mails(env.config)
    assert msg["To"] == "kiwi@popug.test" and msg["Bcc"] is None
    assert msg["Subject"] == f"New task #{task['id']}: Polish the perch 🦜 Bcc: evil@example.com"
    assert msg["Message-ID"] == f"<outbox-{row.id}@uberpopug.localhost>"
    body = msg.get_content()
    assert f"Hello {worker.username}" in body and "Both sides.\n\\. ok" in body
    assert f"Fee charged now: {task['assign_fee']}" in body
    assert f"Reward when you complete it: {task['reward']}" in body
    assert f"http://tasktracker.uberpopug.localhost:{env.port}/" in body
    [row] = await outbox(env)
    assert row.state == "sent" and row.sent_at and row.attempts == 1


@pytest.mark.gen_test
async def test_a_failed_create_queues_nothing(env):
    manager = await env.api("manager")
    r = await manager.post("tracker", "/api/v1/tasks", json={"title": "nobody to do it"})
    assert r.status == 409
    assert await outbox(env) == []


@pytest.mark.gen_test
async def test_shuffle_sends_each_popug_one_digest_of_their_tasks(env):
    manager = await env.api("manager")
    workers = [await env.user("worker") for _ in range(3)]
    for i in range(24):
        await manager.post("tracker", "/api/v1/tasks", json={"title": f"chore {i}"})
    await env.db.run("DELETE FROM core.outbox")  # only the shuffle's messages from here
    r = await manager.post("tracker", "/api/v1/tasks/shuffle")
    assert r.json()["reassigned"] == 24
    rows = await outbox(env)
    by_email = {w.email: w for w in workers}
    holders = await env.db.fetch_all(
        "SELECT u.email, array_agg(t.id ORDER BY t.id) AS ids FROM core.tasks t"
        " JOIN core.users u ON u.id = t.assignee_id GROUP BY u.email"
    )
    assert sorted(r.recipient for r in rows) == sorted(h.email for h in holders)
    assert all(r.kind == "shuffle_digest" for r in rows)
    for h in holders:
        [row] = [r for r in rows if r.recipient == h.email]
        n = len(h.ids)
        assert row.subject == f"Shuffle: {n} {'task is' if n == 1 else 'tasks are'} yours now"
        listed = [
            int(line.split()[0][1:]) for line in row.body.splitlines() if line.startswith("#")
        ]
        assert listed == h.ids
        assert by_email[h.email].username in row.body


@pytest.mark.gen_test
async def test_smtp_delivery_to_a_real_server(env, smtp_server):
    manager = await env.api("manager")
    await env.user("worker", email="pip@popug.test")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "Sing ünïcödé"})
    notifier = Notifier(smtp_config(env.config, smtp_server.port), env.db)
    assert await notifier.deliver_due() == (1, 0)
    [(rcpt, msg)] = smtp_server.messages
    assert rcpt == ["pip@popug.test"]
    assert msg["Subject"].endswith(": Sing ünïcödé")
    assert msg["From"] == "UberPopug <popug@uberpopug.localhost>"
    assert "Sing ünïcödé" in msg.get_content()
    assert (await outbox(env))[0].state == "sent"


@pytest.mark.gen_test(timeout=30)
async def test_a_stalled_smtp_server_costs_a_retry_not_the_ioloop(env, silent_smtp_server):
    manager = await env.api("manager")
    await env.user("worker")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "stuck"})
    notifier = Notifier(smtp_config(env.config, silent_smtp_server), env.db)
    started = time.monotonic()
    delivery = asyncio.ensure_future(notifier.deliver_due())
    # While the delivery waits for a greeting that never comes, pages still answer.
    await asyncio.sleep(0.2)
    r = await Browser(env).get("tracker", "/healthz")
    assert r.status == 200 and not delivery.done()
    assert await delivery == (0, 1)
    assert time.monotonic() - started < 10
    [row] = await outbox(env)
    assert row.state == "pending" and row.attempts == 1
    assert "timed out" in row.last_error.lower() or "timeout" in row.last_error.lower()
    assert row.next_attempt_at > row.created_at
    # Not due yet: the next pass leaves it alone.
    assert await notifier.deliver_due() == (0, 0)


@pytest.mark.gen_test
async def test_gives_up_after_max_attempts(env):
    manager = await env.api("manager")
    await env.user("worker")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "undeliverable"})
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    cfg = smtp_config(env.config, dead_port)
    cfg.notifier["max_attempts"] = 3
    notifier = Notifier(cfg, env.db)
    for attempt in range(1, 4):
        await env.db.run("UPDATE core.outbox SET next_attempt_at = now()")
        assert await notifier.deliver_due() == (0, 1)
        row = (await outbox(env))[0]
        assert row.attempts == attempt
    assert row.state == "failed" and "refused" in row.last_error.lower()
    await env.db.run("UPDATE core.outbox SET next_attempt_at = now()")
    assert await notifier.deliver_due() == (0, 0)


@pytest.mark.gen_test
async def test_interrupted_smtp_send_is_never_sent_again(env, smtp_server):
    manager = await env.api("manager")
    await env.user("worker")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "maybe sent"})
    # As a notifier killed between the server's "250 OK" and its own bookkeeping leaves it:
    await env.db.run(
        "UPDATE core.outbox SET state = 'sending', attempts = 1,"
        " locked_until = now() - interval '1 second'"
    )
    notifier = Notifier(smtp_config(env.config, smtp_server.port), env.db)
    assert await notifier.deliver_due() == (0, 0)
    assert smtp_server.messages == []
    [row] = await outbox(env)
    assert row.state == "failed" and "never arrive twice" in row.last_error


@pytest.mark.gen_test
async def test_interrupted_maildir_delivery_is_finished_without_a_duplicate(env):
    manager = await env.api("manager")
    await env.user("worker")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "half done"})
    notifier = Notifier(env.config, env.db)
    assert await notifier.deliver_due() == (1, 0)
    # The file was written, then the process died before marking the row sent.
    await env.db.run(
        "UPDATE core.outbox SET state = 'sending', sent_at = NULL,"
        " locked_until = now() - interval '1 second'"
    )
    assert await notifier.deliver_due() == (1, 0)
    assert len(mails(env.config)) == 1
    assert (await outbox(env))[0].state == "sent"


@pytest.mark.gen_test
async def test_two_notifiers_deliver_each_message_once(env, smtp_server):
    manager = await env.api("manager")
    for _ in range(3):
        await env.user("worker")
    for i in range(30):
        await manager.post("tracker", "/api/v1/tasks", json={"title": f"t{i}"})
    cfg = smtp_config(env.config, smtp_server.port)
    cfg.notifier["batch"] = 7
    a, b = Notifier(cfg, env.db), Notifier(cfg, env.db)
    total = 0
    for _ in range(6):
        results = await asyncio.gather(a.deliver_due(), b.deliver_due())
        total += sum(sent for sent, _ in results)
    assert total == 30 and len(smtp_server.messages) == 30
    ids = [m["Message-ID"] for _, m in smtp_server.messages]
    assert len(set(ids)) == 30


@pytest.mark.gen_test
async def test_outbox_page_and_api_are_for_admins(env):
    manager = await env.api("manager")
    await env.user("worker")
    await manager.post("tracker", "/api/v1/tasks", json={"title": "visible <b>here</b>"})
    admin = await env.browser("admin")
    r = await admin.get("notifier", "/")
    assert r.status == 200 and "Outbox" in r.text
    assert "visible &lt;b&gt;here&lt;/b&gt;" in r.text and "pending" in r.text
    r = await admin.get("notifier", "/?state=bogus")
    assert r.status == 400
    api = await env.api("admin")
    r = await api.get("notifier", "/api/v1/outbox?state=pending")
    assert r.status == 200 and r.json()["counts"]["pending"] == 1
    assert r.json()["messages"][0]["subject"].startswith("New task #")
    for role in ("manager", "worker", "accountant"):
        b = await env.browser(role)
        assert (await b.get("notifier", "/")).status == 403
        assert (await (await env.api(role)).get("notifier", "/api/v1/outbox")).status == 403


@pytest.mark.gen_test
async def test_admin_alert_goes_to_configured_and_admin_addresses_once(env):
    from popug.notifier import queries

    await env.user("admin", email="boss@popug.test")
    await env.user("admin", email="Boss@popug.test")  # the same mailbox, another case
    await env.user("worker", email="not-me@popug.test")
    cfg = copy.deepcopy(env.config)
    cfg.notifier["admins"] = ["ops@popug.test", "boss@popug.test"]
    n = await queries.queue_admin_alert(env.db, cfg, "replication_alert", "Replica down", "Help")
    assert n == 2
    assert sorted(r.recipient.lower() for r in await outbox(env)) == [
        "boss@popug.test",
        "ops@popug.test",
    ]


@pytest.mark.gen_test
async def test_one_unusable_address_fails_alone(env, smtp_server):
    manager = await env.api("manager")
    await env.user("worker", email="fine@popug.test")
    for i in range(3):
        await manager.post("tracker", "/api/v1/tasks", json={"title": f"ok {i}"})
    # An address the database accepts but no email library can use.
    await env.db.run(
        "INSERT INTO core.outbox (kind, recipient, subject, body)"
        " VALUES ('test', %s, 'odd', 'odd')",
        '."‹@é."<',
    )
    notifier = Notifier(smtp_config(env.config, smtp_server.port), env.db)
    assert await notifier.deliver_due() == (3, 1)
    assert len(smtp_server.messages) == 3
    odd = (await env.db.fetch_all("SELECT * FROM core.outbox WHERE kind = 'test'"))[0]
    assert odd.state == "pending" and odd.attempts == 1 and odd.last_error


@pytest.mark.gen_test(timeout=30)
async def test_a_server_that_never_confirms_the_data_gets_no_second_copy(env):
    class SlowInbox(Inbox):
        async def handle_DATA(self, server, session, envelope):
            await super().handle_DATA(server, session, envelope)
            await asyncio.sleep(3)  # longer than the client's timeout
            return "250 OK"

    inbox = SlowInbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        manager = await env.api("manager")
        await env.user("worker")
        await manager.post("tracker", "/api/v1/tasks", json={"title": "once only"})
        notifier = Notifier(smtp_config(env.config, port), env.db)
        assert await notifier.deliver_due() == (0, 1)
        [row] = await outbox(env)
        assert row.state == "failed" and "never arrive twice" in row.last_error
        await env.db.run("UPDATE core.outbox SET next_attempt_at = now()")
        assert await notifier.deliver_due() == (0, 0)
        await asyncio.sleep(3.5)
        assert len(inbox.messages) == 1
    finally:
        controller.stop()
