"""Service 2, accounting: balances and audit logs, management earnings, end-of-day payouts."""

from tornado.web import url

from popug.accounting import handlers as h


def routes(config):
    return [
        url(r"/", h.HomeHandler, name="accounting.home"),
        url(r"/overview", h.OverviewHandler, name="accounting.overview"),
        url(r"/accounts", h.AccountsHandler, name="accounting.accounts"),
        url(r"/accounts/([^/]+)", h.AccountHandler, name="accounting.account"),
        url(r"/api/v1/accounts/me", h.AccountMeApiHandler, name="accounting.api.me"),
        url(r"/api/v1/accounts/([^/]+)", h.AccountApiHandler, name="accounting.api.account"),
        url(r"/api/v1/earnings", h.EarningsApiHandler, name="accounting.api.earnings"),
    ]


def background(config, db):
    """The accounting duty in this process: close each business day after its cut-off."""
    from popug.accounting.service import DayCloser

    return DayCloser(config, db)
