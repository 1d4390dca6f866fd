"""What the report services (accounting, analytics) share: reading a replica, the
business-day arguments of their pages, and the figures of a range of days.

A replica's schema name comes from config, where it is checked (lower-case
letters, digits and _), so statements name it as {s} and get it filled in.
"""

import asyncio
import datetime as dt
import functools

import psycopg2

from popug.common import days
from popug.common.charts import bar_chart
from popug.common.db import Database, Prepared
from popug.common.errors import UserError

DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 366


class ReplicaReader:
    """A replica a service reads (accounting, analytics): its database and schema."""

    def __init__(self, db, schema, interval_s, service):
        self.db = db
        self.schema = schema
        self.interval_s = interval_s
        self.service = service

    def sql(self, template, prepare_as=None):
        return _in_schema(template, self.schema, prepare_as)

    async def fetch_all(self, template, *params, prepare_as=None):
        """Run a statement ({s}: the replica's schema) on the replica; `prepare_as`
        names the ones run on every page view (prepared once per connection)."""
        try:
            return await self.db.fetch_all(self.sql(template, prepare_as), *params)
        except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as e:
            # The first cycle has not run yet, or the replica is being repaired.
            raise UserError(
                503,
                f"The {self.service} data is not replicated yet (the replicator fills the "
                f"{self.schema} replica every {self.interval_s:g} s). Try again in a moment.",
                headers={"Retry-After": str(max(1, round(self.interval_s)))},
            ) from e

    async def fetch_one(self, template, *params, prepare_as=None):
        return (await self.fetch_all(template, *params, prepare_as=prepare_as))[0]


@functools.cache
def _in_schema(template, schema, prepare_as=None):
    sql = template.replace("{s}", f'"{schema}"')
    return Prepared(f"{prepare_as}_{schema}", sql) if prepare_as else sql


def bounds_arrays(calendar, day_list):
    starts, ends = zip(*(calendar.bounds(d) for d in day_list), strict=True)
    return list(day_list), list(starts), list(ends)


# When the master snapshot the replica holds was taken (all tables share it).
AS_OF = """(SELECT min(snapshot_at) FROM {s}._replica_state
  WHERE table_name IN ('ledger', 'tasks', 'users', 'closed_days'))"""

# One row per requested day, in order, from the ranges computed in Python.
DAILY_FIGURES = f"""
WITH d AS (
    SELECT * FROM unnest(%s::date[], %s::timestamptz[], %s::timestamptz[]) AS d(day, starts, ends)
), moves AS (
    SELECT d.day,
           coalesce(-sum(l.amount) FILTER (WHERE l.kind = 'fee'), 0) AS fees,
           coalesce(sum(l.amount) FILTER (WHERE l.kind = 'reward'), 0) AS rewards,
           count(l.kind) FILTER (WHERE l.kind = 'fee') AS assigned,
           count(l.kind) FILTER (WHERE l.kind = 'reward') AS completed
      FROM d LEFT JOIN {{s}}.ledger l
        ON l.created_at >= d.starts AND l.created_at < d.ends AND l.kind IN ('fee', 'reward')
     GROUP BY d.day
), paid AS (
    SELECT day, -sum(amount) AS payouts, count(*) AS popugs_paid
      FROM {{s}}.ledger
     WHERE kind = 'payout' AND day BETWEEN %s AND %s
     GROUP BY day
)
SELECT m.day, m.fees::numeric(12,2) AS fees, m.rewards::numeric(12,2) AS rewards,
       (m.fees - m.rewards)::numeric(12,2) AS earnings, m.assigned, m.completed,
       coalesce(p.payouts, 0)::numeric(12,2) AS payouts, coalesce(p.popugs_paid, 0) AS popugs_paid,
       c.closed_at, c.early, {AS_OF} AS as_of,
       (SELECT min(day) FROM {{s}}.closed_days) AS first_closed,
       (SELECT max(day) FROM {{s}}.closed_days) AS last_closed
  FROM moves m LEFT JOIN paid p ON p.day = m.day
  LEFT JOIN {{s}}.closed_days c ON c.day = m.day
 ORDER BY m.day
"""


async def daily_figures(reader, calendar, first, last):
    """Per business day from first to last: fees, rewards, earnings, assignments,
    completions and payouts. Earnings = fees charged - rewards credited."""
    day_list, starts, ends = bounds_arrays(calendar, days.day_range(first, last))
    return await reader.fetch_all(
        DAILY_FIGURES, day_list, starts, ends, first, last, prepare_as="daily_figures"
    )


def earnings_chart(figures, first, last):
    """The bar chart of daily management earnings, from daily_figures() rows."""
    return bar_chart(
        [(f"{r.day:%d.%m}", r.earnings) for r in figures],
        f"Management earnings per day, {first} to {last}",
    )


class ReportMixin:
    """For handlers of a service that reads a replica: set `service` and `replica_name()`."""

    def replica_name(self):
        raise NotImplementedError

    def get_template_namespace(self):
        # What every report page shows: times in the business zone, and how
        # often the replica it reads is refreshed.
        ns = super().get_template_namespace()
        ns.update(
            calendar=self.calendar,
            local=self.calendar.local,
            interval=self.config.replication.interval_s,
        )
        return ns

    @property
    def calendar(self):
        settings = self.application.settings
        if "popug_calendar" not in settings:
            settings["popug_calendar"] = days.BusinessCalendar.from_config(self.config)
        return settings["popug_calendar"]

    async def reader(self):
        """The replica this service reads (its own pool when it lives in another database)."""
        name = self.replica_name()
        settings = self.application.settings
        readers = settings.setdefault("popug_readers", {})
        if name not in readers:
            # Two first requests at once would otherwise open two pools.
            async with settings.setdefault("popug_readers_lock", asyncio.Lock()):
                if name not in readers:
                    spec = self.config.replication.replicas[name]
                    db = self.db
                    if spec["dsn"] is not None:
                        db = await Database.connect(
                            spec["dsn"],
                            0,
                            self.config.database.pool_max,
                            self.config.database.timeout_s,
                        )
                    readers[name] = ReplicaReader(
                        db, spec["schema"], self.config.replication.interval_s, self.service
                    )
        return readers[name]

    def day_argument(self, name="day", default=None):
        text = self.get_argument(name, "")
        if not text:
            return default
        try:
            return days.parse_day(text, name)
        except days.BadDate as e:
            raise UserError(400, str(e)) from None

    def day_range_arguments(self):
        """from/to (inclusive), default the last DEFAULT_RANGE_DAYS days up to today."""
        today = self.calendar.today()
        last = self.day_argument("to", today)
        first = self.day_argument(
            "from", max(days.FIRST_DAY, last - dt.timedelta(days=DEFAULT_RANGE_DAYS - 1))
        )
        if first > last:
            raise UserError(400, f"from ({first}) is after to ({last})")
        if (last - first).days >= MAX_RANGE_DAYS:
            raise UserError(400, f"a range is at most {MAX_RANGE_DAYS} days; ask for less")
        return first, last

    def range_form(self, first, last):
        """What _range_form.html needs, besides `today`."""
        return dict(
            first=first,
            last=last,
            shift=(last - first) + dt.timedelta(days=1),
            first_day=days.FIRST_DAY,
        )
