"""Service 6, notifier: delivers the outbox by SMTP or into a maildir; admin outbox page."""

from tornado.web import url

from popug.notifier import handlers as h


def routes(config):
    return [
        url(r"/", h.OutboxHandler, name="notifier.outbox"),
        url(r"/api/v1/outbox", h.OutboxApiHandler, name="notifier.api.outbox"),
    ]


def background(config, db):
    """The notifier's duty in this process: the delivery loop."""
    from popug.notifier.service import Notifier

    return Notifier(config, db)
