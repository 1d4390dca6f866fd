"""The accounting service's duty: close each business day once its cut-off has passed.

Every accounting.close_check_s, and once at start, every day that ended and
is not closed yet is closed, oldest first: after an outage across one or
more cut-offs the missed days are closed in order. Several processes may run
this; the close of one day is serialised and recorded, so it happens once.
"""

import logging

from popug.accounting import queries as q
from popug.common.days import BusinessCalendar
from popug.common.duty import PeriodicDuty
from popug.common.web import public_url

log = logging.getLogger(__name__)


def log_closed(rows):
    for r in rows:
        log.info(
            "accounting: closed business day %s%s: %d popugs paid %s in total",
            r.day,
            " (early)" if r.early else "",
            r.popugs_paid,
            r.total_paid,
        )


class DayCloser(PeriodicDuty):
    name = "end of day"
    service = "accounting"
    run_at_start = True

    def __init__(self, config, db):
        super().__init__()
        self.config = config
        self.db = db
        self.calendar = BusinessCalendar.from_config(config)

    def interval_s(self):
        return self.config.accounting.close_check_s

    async def run_once(self):
        rows = await q.close_days_through(
            self.db,
            self.calendar,
            self.calendar.last_finished_day(),
            "accounting service",
            public_url(self.config, "accounting"),
        )
        log_closed(rows)
        return rows
