"""Service 3, analytics: admin-only figures from the analytics replica."""

from tornado.web import url

from popug.analytics import handlers as h


def routes(config):
    return [
        url(r"/", h.HomeHandler, name="analytics.home"),
        url(r"/api/v1/summary", h.SummaryApiHandler, name="analytics.api.summary"),
        url(r"/api/v1/most-expensive", h.MostExpensiveApiHandler, name="analytics.api.top"),
    ]
