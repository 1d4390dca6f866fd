"""Analytics in SQL, on the `analytics` replica only: earnings, popugs in the negative,
and the most expensive completed task per day, week and month.

Periods are computed in Python in the business timezone (popug.common.days)
and handed to SQL as UTC ranges: a week starts on Monday, a month is a
calendar month, and a period at either end of the asked range is cut to it.
"""

import calendar as monthcal
import datetime as dt

from popug.common import days
from popug.common.reports import AS_OF, bounds_arrays

PERIODS = ("day", "week", "month")

# Business day D's management earnings, and how many popugs were in the
# negative at its end (for today: now). A payout only ever brings a positive
# balance to zero, so it never changes who is negative; it is counted anyway.
SUMMARY = f"""
SELECT coalesce(-sum(l.amount) FILTER (WHERE l.kind = 'fee'), 0)::numeric(12,2) AS fees,
       coalesce(sum(l.amount) FILTER (WHERE l.kind = 'reward'), 0)::numeric(12,2) AS rewards,
       (SELECT count(*) FROM (
            SELECT user_id FROM {{s}}.ledger
             WHERE (kind <> 'payout' AND created_at < %s) OR (kind = 'payout' AND day <= %s)
             GROUP BY user_id HAVING sum(amount) < 0) n) AS negative,
       {AS_OF} AS as_of
  FROM {{s}}.ledger l
 WHERE l.created_at >= %s AND l.created_at < %s AND l.kind IN ('fee', 'reward')
"""

# Popugs in the negative at the end of each day of a range, in one pass:
# every popug's balance before the range, then per day the change of each
# popug who had entries; a popug who crosses zero adds +1 or -1 from that day on.
NEGATIVE_PER_DAY = """
WITH d AS (
    SELECT * FROM unnest(%s::date[], %s::timestamptz[], %s::timestamptz[]) AS d(day, starts, ends)
), opening AS (
    SELECT user_id, sum(amount) AS balance FROM {s}.ledger
     WHERE (kind <> 'payout' AND created_at < %s) OR (kind = 'payout' AND day < %s)
     GROUP BY user_id
), moves AS (
    SELECT day, user_id, sum(amount) AS delta FROM (
        SELECT d.day, l.user_id, l.amount
          FROM d JOIN {s}.ledger l
            ON l.created_at >= d.starts AND l.created_at < d.ends AND l.kind <> 'payout'
        UNION ALL
        SELECT l.day, l.user_id, l.amount FROM {s}.ledger l
         WHERE l.kind = 'payout' AND l.day BETWEEN %s AND %s
    ) m GROUP BY day, user_id
), running AS (
    SELECT m.day, m.user_id, coalesce(o.balance, 0) < 0 AS negative_before,
           coalesce(o.balance, 0) + sum(m.delta) OVER (PARTITION BY m.user_id ORDER BY m.day)
               AS balance
      FROM moves m LEFT JOIN opening o ON o.user_id = m.user_id
), flips AS (
    SELECT day, (balance < 0)::int - coalesce(
               lag((balance < 0)::int) OVER (PARTITION BY user_id ORDER BY day),
               negative_before::int) AS flip
      FROM running
), per_day AS (
    SELECT day, sum(flip) AS flips FROM flips GROUP BY day
)
SELECT d.day, ((SELECT count(*) FROM opening WHERE balance < 0)
               + sum(coalesce(p.flips, 0)) OVER (ORDER BY d.day))::int AS negative
  FROM d LEFT JOIN per_day p ON p.day = d.day
 ORDER BY d.day
"""

# The highest reward among the tasks completed in each period; ties go to the
# one completed first.
MOST_EXPENSIVE = """
SELECT b.first, b.last, t.id, t.title, t.reward, t.completed_at
  FROM unnest(%s::date[], %s::date[], %s::timestamptz[], %s::timestamptz[])
       AS b(first, last, starts, ends)
  LEFT JOIN LATERAL (
      SELECT id, title, reward, completed_at FROM {s}.tasks
       WHERE status = 'done' AND completed_at >= b.starts AND completed_at < b.ends
       ORDER BY reward DESC, completed_at, id
       LIMIT 1) t ON true
 ORDER BY b.first
"""


def periods(kind, first, last):
    """[(first, last)] of each day, Monday-to-Sunday week or calendar month
    touching first..last, cut to that range."""
    out = []
    if kind == "day":
        return [(d, d) for d in days.day_range(first, last)]
    start = first
    while start <= last:
        if kind == "week":
            end = start + dt.timedelta(days=6 - start.weekday())
        else:
            end = start.replace(day=monthcal.monthrange(start.year, start.month)[1])
        end = min(end, last)
        out.append((start, end))
        start = end + dt.timedelta(days=1)
    return out


def label(kind, first, last):
    """How a period reads in the compact form: 03.03, 02.03–08.03, March 2026."""
    if kind == "day":
        return f"{first:%d.%m}"
    if kind == "week":
        return f"{first:%d.%m}–{last:%d.%m}"
    whole = first.day == 1 and last.day == monthcal.monthrange(last.year, last.month)[1]
    name = f"{first:%B %Y}"
    return name if whole else f"{name} ({first:%d.%m}–{last:%d.%m})"


def compact(period):
    """The one-line form: "03.03 — most expensive task — 28.00 (title)"."""
    t = period["task"]
    if t is None:
        return f"{period['label']} — no completed task"
    return f"{period['label']} — most expensive task — {t['reward']:.2f} ({t['title']})"


async def summary(reader, calendar, day):
    """Management earnings of business day `day` and the popugs negative at its end."""
    starts, ends = calendar.bounds(day)
    row = await reader.fetch_one(SUMMARY, ends, day, starts, ends, prepare_as="summary")
    row["earnings"] = row.fees - row.rewards
    return row


async def negative_per_day(reader, calendar, first, last):
    """[(day, popugs in the negative at its end)] for first..last."""
    day_list, starts, ends = bounds_arrays(calendar, days.day_range(first, last))
    rows = await reader.fetch_all(
        NEGATIVE_PER_DAY, day_list, starts, ends, starts[0], first, first, last
    )
    return [(r.day, r.negative) for r in rows]


def periods_params(calendar, kind, first, last):
    """MOST_EXPENSIVE's parameters: each period's first and last day, and its UTC range."""
    spans = periods(kind, first, last)
    return (
        [a for a, _ in spans],
        [b for _, b in spans],
        [calendar.starts(a) for a, _ in spans],
        [calendar.bounds(b)[1] for _, b in spans],
    )


async def most_expensive(reader, calendar, kind, first, last):
    """Per period of `kind` in first..last: {label, from, to, task or None, text}."""
    params = periods_params(calendar, kind, first, last)
    rows = await reader.fetch_all(MOST_EXPENSIVE, *params)
    out = []
    for r in rows:
        task = None
        if r.id is not None:
            task = {
                "id": r.id,
                "title": r.title,
                "reward": r.reward,
                "completed_at": r.completed_at,
            }
        period = {"label": label(kind, r.first, r.last), "from": r.first, "to": r.last}
        period["task"] = task
        period["text"] = compact(period)
        out.append(period)
    return out


def overall(periods_):
    """The most expensive task of the whole range (every task lies in exactly one period)."""
    tasks = [p["task"] for p in periods_ if p["task"] is not None]
    if not tasks:
        return None
    return min(tasks, key=lambda t: (-t["reward"], t["completed_at"], t["id"]))
