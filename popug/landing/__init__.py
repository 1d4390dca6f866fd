"""Service 0, landing: a plain page linking the tracker, accounting and analytics. No auth."""

from tornado.web import url

from popug.common.web import PageHandler


class LandingHandler(PageHandler):
    service = "landing"

    async def get(self):
        self.render("landing.html")


def routes(config):
    return [url(r"/", LandingHandler, name="landing.home")]
