"""Service 5, replicator: copies the master into the read-only replica schemas."""

from tornado.web import url

from popug.replicator import handlers as h


def routes(config):
    return [
        url(r"/", h.StatusHandler, name="replicator.status"),
        url(r"/api/v1/status", h.StatusApiHandler, name="replicator.api.status"),
    ]


def background(config, db):
    from popug.replicator.service import Replicator

    return Replicator(config, db)
