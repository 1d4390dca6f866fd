"""Errors are data: one exception for "the user asked for something wrong"."""

import tornado.web


class UserError(tornado.web.HTTPError):
    """A request that cannot be served as asked: a status and a message for the person.

    A subclass of HTTPError, so Tornado logs it as a one-line warning (no
    traceback) and calls write_error with it, where it becomes a page or JSON.
    """

    def __init__(self, status, message, headers=None):
        # log_message is %-formatted by Tornado's logger.
        super().__init__(status, message.replace("%", "%%"))
        self.status = status
        self.message = message
        self.headers = headers or {}

    def __str__(self):
        return self.message


class NotFound(UserError):
    """A row that should exist does not: 404 in one place."""

    def __init__(self, message="Not found"):
        super().__init__(404, message)
