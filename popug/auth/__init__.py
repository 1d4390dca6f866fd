"""Service 4, auth: one login for every subdomain (SSO by authorization code), users admin."""

from tornado.web import url

from popug.auth import handlers as h


def routes(config):
    return [
        url(r"/", h.HomeHandler, name="auth.home"),
        url(r"/login", h.LoginHandler, name="auth.login"),
        url(r"/password", h.PasswordHandler, name="auth.password"),
        url(r"/users", h.UsersHandler, name="auth.users"),
        url(r"/users/([^/]+)", h.UserHandler, name="auth.user"),
        url(r"/api/v1/tokens", h.TokensApiHandler, name="auth.api.tokens"),
        url(r"/api/v1/me", h.MeApiHandler, name="auth.api.me"),
        url(r"/api/v1/users", h.UsersApiHandler, name="auth.api.users"),
        url(r"/api/v1/users/([^/]+)", h.UserApiHandler, name="auth.api.user"),
    ]
