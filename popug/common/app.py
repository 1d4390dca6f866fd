"""The one Tornado application: a handler group per service, mounted on its host.

Tornado tries host groups in order and, when a group has no matching path,
falls through to the next group whose host matches. Every group therefore
ends with its own catch-all 404, so a tracker URL never shows another
service's page. Hosts match without their port and case-insensitively
(Tornado lowercases request.host_name).
"""

import importlib
import re

import tornado.web

from popug import PACKAGE_DIR, SERVICES
from popug.common import web

STATIC_DIR = PACKAGE_DIR / "common" / "static"
# Every host group serves the static files itself: a group's catch-all 404
# would otherwise answer for them.
STATIC_ROUTE = (r"/static/(.*)", web.StaticHandler, {"path": str(STATIC_DIR)})


def common_routes(service):
    return [
        (r"/healthz", web.HealthHandler),
        (r"/metrics", web.MetricsHandler),
        (r"/sso/callback", web.SsoCallbackHandler),
        (r"/logout", web.LogoutHandler),
        STATIC_ROUTE,
    ]


def service_routes(name, config):
    module = importlib.import_module(f"popug.{name}")
    return module.routes(config)


def make_app(config, db, services="all", cookie_secret=None, debug=False):
    """Build the Application mounting `services` ("all" or a list of names)."""
    if services == "all":
        services = list(SERVICES)
    settings = dict(
        popug_config=config,
        popug_db=db,
        popug_services=tuple(services),
        cookie_secret=cookie_secret,
        xsrf_cookies=True,
        xsrf_cookie_kwargs={"httponly": True, "samesite": "Lax"},
        template_path=str(PACKAGE_DIR),
        static_path=str(STATIC_DIR),
        static_handler_args={"path": str(STATIC_DIR)},
        static_handler_class=web.StaticHandler,
        autoescape="xhtml_escape",
        serve_traceback=False,
        log_function=web.log_request,
        debug=debug,
    )
    unknown = [(r"/healthz", web.HealthHandler), (r"/metrics", web.MetricsHandler)]
    if "landing" in services:
        landing = importlib.import_module("popug.landing")
        # An unknown host gets the landing page itself (its links are absolute).
        unknown += [
            (r"/", landing.LandingHandler),
            STATIC_ROUTE,
        ]
    unknown.append((r"/.*", web.UnknownHostHandler))
    app = tornado.web.Application(unknown, **settings)
    for name in services:
        host = config.hosts[name]
        routes = service_routes(name, config) + common_routes(name)
        routes.append((r"/.*", web.NotFoundHandler))
        app.add_handlers(re.escape(host) + "$", routes)
    for name, host in config.hosts.items():
        if name not in services and host not in {config.hosts[s] for s in services}:
            absent = [
                (r"/healthz", web.HealthHandler),
                (r"/metrics", web.MetricsHandler),
                STATIC_ROUTE,
                (r"/.*", web.ServiceAbsentHandler, {"name": name}),
            ]
            app.add_handlers(re.escape(host) + "$", absent)
    return app
