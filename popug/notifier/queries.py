"""The outbox in SQL: queue, claim, settle, list.

Other services queue messages with `queue_message` / `queue_admin_alert`
inside their own transaction (pass `cur`), so a message exists exactly when
the change it reports committed.
"""

from popug.common.web import check_text

RECENT_LIMIT = 200


async def queue_message(db, kind, recipient, subject, body, cur=None):
    """Queue one email (in the caller's transaction when `cur` is given)."""
    await db.run(
        "INSERT INTO core.outbox (kind, recipient, subject, body) VALUES (%s, %s, %s, %s)",
        kind,
        recipient,
        check_text(subject, "subject", 300),
        check_text(body, "body", 100_000),
        cur=cur,
    )


async def admin_recipients(db, config, cur=None):
    """notifier.admins from config plus every active admin's email, each once."""
    rows = await db.fetch_all(
        "SELECT DISTINCT email FROM core.users WHERE role = 'admin' AND active AND email <> ''",
        cur=cur,
    )
    seen = []
    for address in list(config.notifier.admins) + [r.email for r in rows]:
        if address.lower() not in (a.lower() for a in seen):
            seen.append(address)
    return seen


async def queue_admin_alert(db, config, kind, subject, body, cur=None):
    """Queue one message to every admin; returns how many were queued."""
    recipients = await admin_recipients(db, config, cur=cur)
    for address in recipients:
        await queue_message(db, kind, address, subject, body, cur=cur)
    return len(recipients)


# Several notifiers may run: SKIP LOCKED hands each row to exactly one. The
# row is 'sending' (held until locked_until) while its delivery runs.
CLAIM_DUE = """
UPDATE core.outbox o SET state = 'sending', attempts = o.attempts + 1,
       locked_until = now() + make_interval(secs => %s)
  FROM (SELECT id FROM core.outbox
         WHERE state = 'pending' AND next_attempt_at <= now()
         ORDER BY next_attempt_at, id
         LIMIT %s
           FOR UPDATE SKIP LOCKED) due
 WHERE o.id = due.id
RETURNING o.id, o.kind, o.recipient, o.subject, o.body, o.created_at, o.attempts
"""


async def claim_due(db, batch, lease_s):
    return await db.fetch_all(CLAIM_DUE, lease_s, batch)


async def mark_sent(db, message_id):
    await db.run(
        "UPDATE core.outbox SET state = 'sent', sent_at = now(), locked_until = NULL,"
        " last_error = NULL WHERE id = %s AND state = 'sending'",
        message_id,
    )


async def mark_failed_attempt(db, message_id, error, max_attempts, backoff_s):
    """Back to pending with an exponential backoff, or failed after the last attempt."""
    await db.run(
        "UPDATE core.outbox SET locked_until = NULL, last_error = left(%s, 1000),"
        "  state = CASE WHEN attempts >= %s THEN 'failed' ELSE 'pending' END,"
        "  next_attempt_at = now() + make_interval(secs => %s * power(2, attempts - 1))"
        " WHERE id = %s AND state = 'sending'",
        error,
        max_attempts,
        backoff_s,
        message_id,
    )


async def mark_failed_for_good(db, message_id, error):
    """No retry: the server may have the message already (it never said)."""
    await db.run(
        "UPDATE core.outbox SET state = 'failed', locked_until = NULL, last_error = left(%s, 1000)"
        " WHERE id = %s AND state = 'sending'",
        error,
        message_id,
    )


async def recover_interrupted(db, resend, max_attempts):
    """Rows left 'sending' by a process that died mid-delivery.

    Over SMTP we cannot know whether the server accepted the message before
    the process died, and a message must never arrive twice: such rows are
    marked failed for a person to look at. A maildir delivery is idempotent
    (the file is named after the row), so those go back to pending.
    """
    if resend:
        sql = (
            "UPDATE core.outbox SET locked_until = NULL, next_attempt_at = now(),"
            " state = CASE WHEN attempts >= %s THEN 'failed' ELSE 'pending' END,"
            " last_error = CASE WHEN attempts >= %s THEN 'interrupted on its last attempt'"
            "                   ELSE last_error END"
            " WHERE state = 'sending' AND locked_until < now()"
        )
        return await db.run(sql, max_attempts, max_attempts)
    else:
        sql = (
            "UPDATE core.outbox SET state = 'failed', locked_until = NULL,"
            " last_error = 'delivery was interrupted (process stopped mid-send); not retried,"
            " so that it can never arrive twice'"
            " WHERE state = 'sending' AND locked_until < now()"
        )
    return await db.run(sql)


async def recent_messages(db, state=None, limit=RECENT_LIMIT):
    return await db.fetch_all(
        "SELECT id, kind, recipient, subject, state, attempts, created_at, next_attempt_at,"
        "       sent_at, last_error"
        "  FROM core.outbox WHERE (%s::text IS NULL OR state = %s)"
        " ORDER BY id DESC LIMIT %s",
        state,
        state,
        limit,
    )


async def outbox_counts(db):
    rows = await db.fetch_all("SELECT state, count(*) AS n FROM core.outbox GROUP BY state")
    counts = {"pending": 0, "sending": 0, "sent": 0, "failed": 0}
    counts.update({r.state: r.n for r in rows})
    return counts
