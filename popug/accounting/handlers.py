"""Accounting's pages and API: one's own account, anyone's for accountants and admins,
and the management earnings per day. Thin: parse, call queries, render."""

import datetime as dt

from popug.accounting import queries as q
from popug.common import days, reports
from popug.common.errors import UserError
from popug.common.reports import ReportMixin
from popug.common.web import (
    ApiHandler,
    PageHandler,
    api_auth_required,
    auth_required,
    has_perm,
    parse_id,
)


class AccountingMixin(ReportMixin):
    service = "accounting"

    def replica_name(self):
        return self.config.accounting.replica

    def require_account_access(self, user_id):
        """One's own account is always visible; anyone else's needs can_view_accounts."""
        if user_id != self.current_user.id:
            self.require_perm("can_view_accounts")

    async def account_view(self, user_id):
        day = self.day_argument("day", self.calendar.today())
        return await q.account_day(await self.reader(), self.db, self.calendar, user_id, day)


class AccountingPage(AccountingMixin, PageHandler):
    def render_account(self, account):
        day = account["day"]
        self.render(
            "account.html",
            holder=account["holder"],
            account=account,
            closed=account["closed"],
            as_of=account["as_of"],
            is_self=account["holder"].id == self.current_user.id,
            today=self.calendar.today(),
            prev_day=day - dt.timedelta(days=1) if day > days.FIRST_DAY else None,
            # The future has no entries: the navigation stops at today.
            next_day=day + dt.timedelta(days=1) if day < self.calendar.today() else None,
        )


class HomeHandler(AccountingPage):
    """/ — my account today (accountants and admins without an account: the overview)."""

    @auth_required
    async def get(self):
        if not self.current_user.assignable and self.can("can_view_accounts"):
            self.redirect(self.reverse_url("accounting.overview"))
            return
        self.render_account(await self.account_view(self.current_user.id))


class AccountHandler(AccountingPage):
    """/accounts/{id} — a popug's account (one's own, or anyone's with can_view_accounts)."""

    @auth_required
    async def get(self, user_id):
        user_id = parse_id(user_id, "user id")
        self.require_account_access(user_id)
        self.render_account(await self.account_view(user_id))


class AccountsHandler(AccountingPage):
    """/accounts — every popug's balance."""

    @auth_required
    @has_perm("can_view_accounts")
    async def get(self):
        search = self.get_argument("q", "").strip()[:100]
        books = await self.reader()
        rows = await q.accounts(books, await q.assignable_roles(self.db), search)
        self.render(
            "accounts.html",
            rows=rows[: q.ACCOUNTS_LIMIT],
            more=len(rows) > q.ACCOUNTS_LIMIT,
            search=search,
            as_of=await q.data_as_of(books),
        )


class OverviewHandler(AccountingPage):
    """/overview — today's management earnings, a chart and a table of past days."""

    @auth_required
    @has_perm("can_view_accounts")
    async def get(self):
        first, last = self.day_range_arguments()
        today = self.calendar.today()
        books = await self.reader()
        figures = await reports.daily_figures(books, self.calendar, first, last)
        if figures[-1].day == today:
            today_figures = figures[-1]  # no second statement for what is in hand
        else:
            today_figures = (await reports.daily_figures(books, self.calendar, today, today))[0]
        chart = reports.earnings_chart(figures, first, last)
        self.render(
            "overview.html",
            figures=figures,
            today_figures=today_figures,
            today=today,
            **self.range_form(first, last),
            closed_span=(figures[0].first_closed, figures[0].last_closed),
            chart=chart,
            as_of=figures[0].as_of,
        )


# --- API -----------------------------------------------------------------------------


def entry_json(e):
    return {
        "id": e.id,
        "kind": e.kind,
        "amount": e.amount,
        "created_at": e.created_at,
        "closes_day": e.day,
        "task": None
        if e.task_id is None
        else {"id": e.task_id, "title": e.title, "description": e.description},
        "balance_after": e.balance_after,
    }


def account_json(account, calendar):
    holder = account["holder"]
    return {
        "user": {"id": holder.id, "username": holder.username},
        "day": account["day"],
        "timezone": calendar.timezone_name,
        "day_starts_at": account["starts"],
        "day_ends_at": account["ends"],
        "day_closed": account["closed"] is not None,
        "balance": account["balance"],
        "opening_balance": account["opening"],
        "closing_balance": account["closing"],
        "entries": [entry_json(e) for e in account["entries"]],
        "truncated": account["truncated"],
        "data_as_of": account["as_of"],
    }


def figures_json(r):
    return {
        "day": r.day,
        "management_earnings": r.earnings,
        "fees_charged": r.fees,
        "rewards_credited": r.rewards,
        "tasks_assigned": r.assigned,
        "tasks_completed": r.completed,
        "payouts": r.payouts,
        "popugs_paid": r.popugs_paid,
        "closed": r.closed_at is not None,
    }


class AccountingApi(AccountingMixin, ApiHandler):
    pass


class AccountMeApiHandler(AccountingApi):
    @api_auth_required
    async def get(self):
        view = await self.account_view(self.current_user.id)
        self.write_json(account_json(view, self.calendar))


class AccountApiHandler(AccountingApi):
    @api_auth_required
    async def get(self, user_id):
        user_id = parse_id(user_id, "user id")
        self.require_account_access(user_id)
        view = await self.account_view(user_id)
        self.write_json(account_json(view, self.calendar))


class EarningsApiHandler(AccountingApi):
    """?day= one day (default today), or ?from=&to= a range of days."""

    @api_auth_required
    @has_perm("can_view_accounts")
    async def get(self):
        books = await self.reader()
        ranged = self.get_argument("from", "") or self.get_argument("to", "")
        if ranged and self.get_argument("day", ""):
            raise UserError(400, "send either day or from/to, not both")
        if ranged:
            first, last = self.day_range_arguments()
        else:
            first = last = self.day_argument("day", self.calendar.today())
        rows = await reports.daily_figures(books, self.calendar, first, last)
        as_of = rows[0].as_of
        if ranged:
            self.write_json(
                {
                    "timezone": self.calendar.timezone_name,
                    "days": [figures_json(r) for r in rows],
                    "data_as_of": as_of,
                }
            )
        else:
            out = figures_json(rows[0])
            out.update(timezone=self.calendar.timezone_name, data_as_of=as_of)
            self.write_json(out)
