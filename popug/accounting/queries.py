"""Accounting in SQL: accounts and per-day figures from the replica, the close on the master.

Reads go to the `accounting` replica (config accounting.replica), which the
replicator refreshes every few seconds; its schema name comes from config
and is checked there (lower-case letters, digits and _), so it is safe to
put into the statements below. Writes — the end-of-day payouts — go to the
master, in one transaction per business day.

Which entries belong to business day D (bounds from popug.common.days):
fees and rewards by their time, created_at in [starts, ends); a payout by
the day it closes (ledger.day = D), although it is written just after the
cut-off. The balance at the end of D is therefore every fee and reward
before `ends` plus every payout of a day up to D.
"""

import datetime as dt

from popug.common import days
from popug.common.db import Row
from popug.common.errors import UserError
from popug.common.reports import AS_OF

ENTRIES_LIMIT = 2000
ACCOUNTS_LIMIT = 500


# --- accounts ----------------------------------------------------------------------

FRESHNESS = f"SELECT {AS_OF} AS as_of"

ACCOUNT_HOLDER = "SELECT id, username, role, active FROM {s}.users WHERE id = %s"

# Whose account, its balance now, at the start of the day and at its end
# (after its payout, if any), whether the day is closed, and how fresh.
ACCOUNT_SUMMARY = f"""
SELECT u.id, u.username, u.role, u.active, b.balance, b.opening, b.closing,
       c.closed_at, c.early, {AS_OF} AS as_of,
       (SELECT min(day) FROM {{s}}.closed_days) AS first_closed
  FROM (SELECT %s::bigint AS id) me
  LEFT JOIN {{s}}.users u ON u.id = me.id
 CROSS JOIN LATERAL (
    SELECT coalesce(sum(amount), 0)::numeric(12,2) AS balance,
           coalesce(sum(amount) FILTER (
               WHERE (kind <> 'payout' AND created_at < %s) OR (kind = 'payout' AND day < %s)
           ), 0)::numeric(12,2) AS opening,
           coalesce(sum(amount) FILTER (
               WHERE (kind <> 'payout' AND created_at < %s) OR (kind = 'payout' AND day <= %s)
           ), 0)::numeric(12,2) AS closing
      FROM {{s}}.ledger WHERE user_id = me.id) b
  LEFT JOIN {{s}}.closed_days c ON c.day = %s
"""

# The summary and the day's entries in one statement, so in one snapshot of
# the replica (two statements could straddle a replication cycle): one row
# per entry, each carrying the summary; a day without entries is one row
# whose entry columns are NULL.
ACCOUNT_DAY = f"""
SELECT s.*, e.entry_id, e.kind, e.amount, e.created_at, e.day, e.task_id, e.title,
       e.description
  FROM ({ACCOUNT_SUMMARY}) s
  LEFT JOIN LATERAL (
    SELECT l.id AS entry_id, l.kind, l.amount, l.created_at, l.day, l.task_id, t.title,
           t.description
      FROM {{s}}.ledger l LEFT JOIN {{s}}.tasks t ON t.id = l.task_id
     WHERE l.user_id = %s
       AND ((l.kind <> 'payout' AND l.created_at >= %s AND l.created_at < %s)
            OR (l.kind = 'payout' AND l.day = %s))
     ORDER BY l.created_at, l.id
     LIMIT %s) e ON true
 ORDER BY e.created_at, e.entry_id
"""
ENTRY_COLUMNS = ("kind", "amount", "created_at", "day", "task_id", "title", "description")


async def data_as_of(books):
    """When the master snapshot the replica holds was taken (None before the first copy)."""
    row = await books.fetch_one(FRESHNESS)
    return row.as_of


async def account_day(books, master, calendar, user_id, day):
    """One popug's account for one business day: balances and the day's entries.

    Returns a dict: holder (id, username, role, active), balance (now),
    opening and closing (of the day), entries (each with the balance after
    it), truncated (more than ENTRIES_LIMIT), closed (closed_at and early, or
    None), as_of (the replica's snapshot time). Every sum is exact: numeric
    in SQL, Decimal here.
    """
    starts, ends = calendar.bounds(day)
    rows = await books.fetch_all(
        ACCOUNT_DAY,
        *(user_id, starts, day, ends, day, day),  # the summary
        *(user_id, starts, ends, day, ENTRIES_LIMIT + 1),  # the entries
        prepare_as="account_day",
    )
    bal = rows[0]
    entries = [
        Row({"id": r.entry_id, **{c: r[c] for c in ENTRY_COLUMNS}})
        for r in rows
        if r.entry_id is not None
    ]
    holder = bal
    if bal.id is None:
        # A popug created since the last replication cycle is not in the
        # replica yet: their name comes from the master (the account is empty
        # here until the next cycle).
        rows = await master.fetch_all(ACCOUNT_HOLDER.replace("{s}", "core"), user_id)
        if not rows:
            raise UserError(404, f"There is no popug #{user_id}.")
        holder = rows[0]
    opening = bal.opening
    truncated = len(entries) > ENTRIES_LIMIT
    entries = entries[:ENTRIES_LIMIT]
    running = opening
    for e in entries:
        running += e.amount
        e["balance_after"] = running
    return {
        "holder": holder,
        "closed": bal if bal.closed_at is not None else None,
        "as_of": bal.as_of,
        # Days before the first closed one were paid out by that first close.
        "first_closed": bal.first_closed,
        "day": day,
        "starts": starts,
        "ends": ends,
        "balance": bal.balance,
        "opening": opening,
        # Everything up to the cut-off and the day's payout, whatever the list shows.
        "closing": bal.closing,
        "entries": entries,
        "truncated": truncated,
    }


ACCOUNTS = """
SELECT u.id, u.username, u.role, u.active,
       coalesce(b.balance, 0)::numeric(12,2) AS balance, coalesce(b.entries, 0) AS entries
  FROM {s}.users u
  LEFT JOIN (SELECT user_id, sum(amount) AS balance, count(*) AS entries
               FROM {s}.ledger GROUP BY user_id) b ON b.user_id = u.id
 WHERE (b.user_id IS NOT NULL OR u.role = ANY(%s))
   AND (%s = '' OR strpos(lower(u.username), lower(%s)) > 0)
 ORDER BY lower(u.username)
 LIMIT %s
"""


async def accounts(books, assignable_roles, search=""):
    """Every popug who holds or can hold tasks, with their balance (first ACCOUNTS_LIMIT)."""
    return await books.fetch_all(
        ACCOUNTS, list(assignable_roles), search, search, ACCOUNTS_LIMIT + 1
    )


async def assignable_roles(db):
    rows = await db.fetch_all("SELECT name FROM core.roles WHERE assignable ORDER BY name")
    return [r.name for r in rows]


# --- the end of a business day (on the master) ------------------------------------------


async def last_closed_day(db):
    """The latest closed business day, on the master."""
    row = await db.fetch_one("SELECT max(day) AS day FROM core.closed_days")
    return row.day


# Whoever is owed money at the cut-off is paid exactly that: the balance of
# every fee and reward before `ends` and every payout of an earlier day. An
# entry that committed after an earlier close (its transaction began before
# the cut-off) is in this sum, so it is paid the next time; nothing is paid
# twice and nothing is lost. The unique index on (user_id, day) of payouts
# makes a second close of the same day insert nothing, even if it got past
# the lock and the closed_days check somehow.
CLOSE_DAY = """
WITH owed AS (
    SELECT user_id, sum(amount) AS balance
      FROM core.ledger
     WHERE (kind <> 'payout' AND created_at < %s) OR (kind = 'payout' AND day < %s)
     GROUP BY user_id
    HAVING sum(amount) > 0
), paid AS (
    INSERT INTO core.ledger (user_id, kind, amount, day)
    SELECT user_id, 'payout', -balance, %s FROM owed ORDER BY user_id
        ON CONFLICT (user_id, day) WHERE kind = 'payout' DO NOTHING
    RETURNING user_id, -amount AS amount
), mail AS (
    INSERT INTO core.outbox (kind, recipient, subject, body)
    SELECT 'payout', u.email, 'Payout for ' || %s || ': ' || p.amount,
           'Hello ' || u.username || E',\n\n' || %s || E'\nYour balance then was '
           || p.amount || E', and it has been paid out to you.\n' || %s
           || E'\n\nYour account: ' || %s || E'\n'
      FROM paid p JOIN core.users u ON u.id = p.user_id
     WHERE u.email <> ''
)
INSERT INTO core.closed_days (day, starts_at, ends_at, early, popugs_paid, total_paid, closed_by)
SELECT %s, %s, %s, %s, count(*), coalesce(sum(amount), 0), %s FROM paid
RETURNING *
"""

# Closes take turns across processes (two at once would both find the day open).
CLOSE_LOCK = 7_200_000_301


async def close_business_day(db, calendar, day, closed_by, account_url, now=None):
    """Pay out every positive balance at the end of `day`; once per day, ever.

    Returns the new core.closed_days row, or None when the day was closed
    already. A day may be closed before its cut-off (early); never before
    it has begun.
    """
    now = now or dt.datetime.now(days.UTC)
    starts, ends = calendar.bounds(day)
    if now < starts:
        raise UserError(400, f"Business day {day} has not begun yet; it cannot be closed.")
    async with db.transaction() as cur:
        await db.run("SELECT pg_advisory_xact_lock(%s)", CLOSE_LOCK, cur=cur)
        done = await db.fetch_optional(
            "SELECT 1 AS yes FROM core.closed_days WHERE day = %s", day, cur=cur
        )
        if done:
            return None
        label = day.isoformat()
        early = now < ends
        if early:
            at = calendar.local(now).strftime("%H:%M %Z")
            headline = (
                f"The business day {label} ({calendar.describe()}) was closed early, at {at}."
            )
            tail = "What comes in later that day counts toward the next payout."
        else:
            headline = f"The business day {label} ({calendar.describe()}) is closed."
            tail = "Your account starts the next day at 0.00."
        return await db.fetch_one(
            CLOSE_DAY,
            ends,
            day,
            day,
            label,
            headline,
            tail,
            f"{account_url}?day={label}",
            day,
            starts,
            ends,
            early,
            closed_by,
            cur=cur,
        )


async def first_entry_day(db, calendar):
    """The business day of the first ledger entry; None for an empty ledger."""
    row = await db.fetch_one("SELECT min(created_at) AS first FROM core.ledger")
    return calendar.day_of(row.first) if row.first else None


async def first_day_to_close(db, calendar, through, now=None):
    """The day after the last closed one.

    With none closed yet, `through` itself (never before the first entry): the
    very first close pays everything owed up to then in one payout, instead of
    one payout and one email per day of history from before accounting ran.
    """
    last = await last_closed_day(db)
    if last is not None:
        return last + dt.timedelta(days=1)
    first_entry = await first_entry_day(db, calendar) or calendar.today(now)
    return max(first_entry, through)


async def close_days_through(db, calendar, through, closed_by, account_url, now=None):
    """Close every open business day up to `through`, oldest first; returns the new rows.

    This is the catch-up after an outage too: days missed while no process
    ran are closed in order, each paying the balance at its own cut-off.
    A day is closed once: closing today early pays what is owed now, and what
    the rest of today brings is paid with the next day's close.
    """
    now = now or dt.datetime.now(days.UTC)
    if through > calendar.today(now):
        raise UserError(
            400,
            f"{through} has not begun yet (today is {calendar.today(now)} in "
            f"{calendar.timezone_name}); the latest day that can be closed is today.",
        )
    closed = []
    day = await first_day_to_close(db, calendar, through, now)
    while day <= through:
        row = await close_business_day(db, calendar, day, closed_by, account_url, now)
        if row is not None:
            closed.append(row)
        day += dt.timedelta(days=1)
    return closed
