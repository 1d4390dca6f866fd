"""Analytics' page and API, for admins: today at a glance, a range of days with charts,
and the most expensive task per day, week and month. Thin: parse, query, render."""

from popug.analytics import queries as q
from popug.common import reports
from popug.common.charts import bar_chart
from popug.common.db import Row
from popug.common.errors import UserError
from popug.common.reports import ReportMixin
from popug.common.web import ApiHandler, PageHandler, api_auth_required, auth_required, has_perm


class AnalyticsMixin(ReportMixin):
    service = "analytics"

    def replica_name(self):
        return self.config.analytics.replica

    def period_argument(self):
        kind = self.get_argument("period", "day")
        if kind not in q.PERIODS:
            raise UserError(400, f"period must be one of day, week, month; got {kind[:40]!r}")
        return kind


class HomeHandler(AnalyticsMixin, PageHandler):
    """/ — the dashboard."""

    @auth_required
    @has_perm("can_view_analytics")
    async def get(self):
        first, last = self.day_range_arguments()
        reader = await self.reader()
        today = self.calendar.today()
        figures = await reports.daily_figures(reader, self.calendar, first, last)
        negative = await q.negative_per_day(reader, self.calendar, first, last)
        if last == today:
            # Today's figures are the range's last day: no second pass over the ledger.
            f = figures[-1]
            now = Row(
                fees=f.fees,
                rewards=f.rewards,
                earnings=f.earnings,
                negative=negative[-1][1],
                as_of=f.as_of,
            )
        else:
            now = await q.summary(reader, self.calendar, today)
        top = {k: await q.most_expensive(reader, self.calendar, k, first, last) for k in q.PERIODS}
        today_top = await q.most_expensive(reader, self.calendar, "day", today, today)
        self.render(
            "home.html",
            now=now,
            today=today,
            today_top=today_top[0],
            **self.range_form(first, last),
            rows=list(zip(figures, negative, top["day"], strict=True)),
            top=top,
            overall=q.overall(top["day"]),
            earnings_chart=reports.earnings_chart(figures, first, last),
            negative_chart=bar_chart(
                [(f"{d:%d.%m}", n) for d, n in negative],
                f"Popugs in the negative at the end of each day, {first} to {last}",
                money=False,
            ),
            as_of=now.as_of,
        )


class AnalyticsApi(AnalyticsMixin, ApiHandler):
    pass


class SummaryApiHandler(AnalyticsApi):
    """?day= (default today): management earnings and popugs in the negative."""

    @api_auth_required
    @has_perm("can_view_analytics")
    async def get(self):
        day = self.day_argument("day", self.calendar.today())
        row = await q.summary(await self.reader(), self.calendar, day)
        self.write_json(
            {
                "day": day,
                "timezone": self.calendar.timezone_name,
                "management_earnings": row.earnings,
                "fees_charged": row.fees,
                "rewards_credited": row.rewards,
                "negative_balance_popugs": row.negative,
                "data_as_of": row.as_of,
            }
        )


class MostExpensiveApiHandler(AnalyticsApi):
    """?period=day|week|month&from=&to= (default the last 30 days)."""

    @api_auth_required
    @has_perm("can_view_analytics")
    async def get(self):
        kind = self.period_argument()
        first, last = self.day_range_arguments()
        found = await q.most_expensive(await self.reader(), self.calendar, kind, first, last)
        self.write_json(
            {
                "period": kind,
                "from": first,
                "to": last,
                "timezone": self.calendar.timezone_name,
                "periods": found,
                "overall": q.overall(found),
            }
        )
