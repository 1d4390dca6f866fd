"""The base handlers, the decorators and the handlers every service host mounts.

Each service's handlers subclass PageHandler (HTML) or ApiHandler (JSON). The
user is loaded once in `prepare()`: a stale, revoked or deactivated session
is simply "logged out". Errors are UserError anywhere; write_error turns them
into an HTML page or {"error": ...} in one place.
"""

import asyncio
import datetime
import decimal
import functools
import json
import logging
import re
import time
import typing
import urllib.parse

import tornado.web
from tornado.escape import url_escape
from tornado.log import access_log

from popug.common import metrics, sessions
from popug.common.errors import UserError

log = logging.getLogger(__name__)

MAX_BIGINT = 2**63 - 1
DEFAULT_PORTS = {"http": 80, "https": 443}

STATUS_TEXT = {
    400: "That request could not be used",
    401: "Please log in",
    403: "Not allowed",
    404: "Not found",
    405: "That method is not allowed here",
    409: "Conflict",
    413: "That request is too large",
    429: "Too many attempts",
    503: "Service unavailable",
}


# How a refused permission reads to a person. Permissions are data: one not
# listed here still gets a message, with its name.
PERMISSION_TEXT = {
    "can_add_task": "create tasks",
    "can_shuffle_tasks": "shuffle tasks",
    "can_view_all_tasks": "see other popugs' tasks",
    "can_manage_users": "manage users",
    "can_view_accounts": "see other popugs' accounts or the management earnings",
    "can_view_analytics": "see analytics",
}


# Requests being served, so a stopping server can let them finish first.
IN_FLIGHT = set()
STOPPING = False


async def wait_for_requests(timeout):
    """Wait until no request is being served, at most `timeout` seconds; True when drained."""
    global STOPPING
    STOPPING = True
    deadline = time.monotonic() + timeout
    while IN_FLIGHT and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return not IN_FLIGHT


DATABASE_DOWN = UserError(
    503,
    "The database is not answering right now. Please try again in a moment.",
    headers={"Retry-After": "5"},
)


def database_unavailable(exc):
    """Is this exception the database being down or unreachable (not a bug of ours)?"""
    import psycopg2

    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)):
        return True  # connection lost or refused; also a statement timeout (overloaded)
    # aiopg's pool after close, or an operation past its timeout
    return isinstance(exc, (TimeoutError, asyncio.TimeoutError)) or (
        isinstance(exc, RuntimeError) and "closing pool" in str(exc)
    )


def public_url(config, service, path="/"):
    """A service's address for text written without a request (emails from background duties).

    server.public_port when set; else behind a reverse proxy (server.xheaders)
    the proxy's default port, so none is named; else this process's port.
    """
    scheme = config.server.public_scheme
    port = config.server.public_port
    if port is None and not config.server.xheaders:
        port = config.server.port
    suffix = "" if port is None or port == DEFAULT_PORTS[scheme] else f":{port}"
    return f"{scheme}://{config.hosts[service]}{suffix}{path}"


class Flash(typing.NamedTuple):
    kind: str
    message: str


def parse_id(value, what="id"):
    """A path or query id as a positive int, or a 400 that says what was wrong."""
    if value is None:
        raise UserError(400, f"{what} is required")
    if not value.isascii() or not value.isdigit() or not value.strip("0"):
        raise UserError(400, f"{what} must be a positive whole number, got {value[:40]!r}")
    if len(value.lstrip("0")) > 19:  # before int(): huge digit strings are slow or refused
        raise UserError(400, f"{what} is out of range: {value[:40]}")
    n = int(value)
    if n > MAX_BIGINT:
        raise UserError(400, f"{what} is out of range: {value}")
    return n


def sentence(message):
    """A message as a sentence on a page: capital first letter, closing punctuation.

    The API's messages start with the field's name ("title is required");
    a person reads "Title is required." on a page.
    """
    message = (message or "").strip()
    if not message:
        return message
    message = message[0].upper() + message[1:]
    return message if message[-1] in ".!?)" else message + "."


def is_text(value):
    """A string PostgreSQL can store: no NUL, no lone surrogates."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value, field, max_len, required=False):
    """A user-typed string: no NUL, within its limit, stripped if required."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise UserError(400, f"{field} must be a string")
    if "\x00" in value:
        raise UserError(400, f"{field} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(400, f"{field} is not valid Unicode text (lone surrogate)") from None
    if required:
        value = value.strip()
        if not value:
            raise UserError(400, f"{field} is required")
    if len(value) > max_len:
        raise UserError(400, f"{field} is too long: {len(value)} characters, at most {max_len}")
    return value


def log_request(handler):
    """Access log with the host, and without SSO codes (they are credentials for a minute)."""
    status = handler.get_status()
    if status < 400:
        log_method = access_log.info
    elif status < 500:
        log_method = access_log.warning
    else:
        log_method = access_log.error
    r = handler.request
    uri = redact(r.uri)
    if len(uri) > 300:
        uri = uri[:300] + f"...({len(uri)} characters)"
    metrics.observe_request(handler)
    log_method(
        "%d %s %s%s (%s) %.2fms",
        status,
        r.method,
        r.host_name,
        uri,
        r.remote_ip,
        1000.0 * r.request_time(),
    )


SECRET_QUERY = re.compile(r"\b(code)=[^&]*")


def redact(uri):
    return SECRET_QUERY.sub(r"\1=***", uri) if "code=" in uri else uri


class StaticHandler(tornado.web.StaticFileHandler):
    """Static files; a path with a NUL byte is simply not there (not a 500)."""

    def parse_url_path(self, url_path):
        if "\x00" in url_path:
            raise tornado.web.HTTPError(404)
        return super().parse_url_path(url_path)


def to_json(obj):
    """JSON with Decimal as "12.34" and aware datetimes as ISO 8601 with offset."""

    def default(o):
        if isinstance(o, decimal.Decimal):
            return f"{o:.2f}"
        if isinstance(o, datetime.datetime):
            # One format everywhere (the database builds the same): UTC, microseconds.
            return o.astimezone(datetime.UTC).isoformat(timespec="microseconds")
        if isinstance(o, datetime.date):
            return o.isoformat()  # a business day: YYYY-MM-DD
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(f"not JSON serialisable: {type(o).__name__}")

    return json.dumps(obj, default=default, ensure_ascii=False)


class BaseHandler(tornado.web.RequestHandler):
    """What pages and API handlers share: config, db, the current user, URLs."""

    service = "common"

    @property
    def config(self):
        return self.application.settings["popug_config"]

    @property
    def db(self):
        return self.application.settings["popug_db"]

    def bearer_token(self):
        auth = self.request.headers.get("Authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
        return None

    def session_token(self):
        raw = self.get_signed_cookie(sessions.SESSION_COOKIE, max_age_days=400)
        # get_signed_cookie returns bytes (or None).
        return raw.decode("utf-8", "replace") if raw else None

    async def prepare(self):
        IN_FLIGHT.add(self)
        token = self.bearer_token()
        self.via_bearer = token is not None
        if token is None:
            token = self.session_token()
        self.current_user = await sessions.load_session_user(
            self.db, token, self.request.host_name, bearer=self.via_bearer
        )

    def set_default_headers(self):
        if STOPPING:
            # Draining before a stop: answer, then close the keep-alive connection.
            self.set_header("Connection", "close")

    def _request_summary(self):
        # Tornado's warning lines name the request: without SSO codes in them.
        return f"{self.request.method} {redact(self.request.uri)} ({self.request.remote_ip})"

    def on_finish(self):
        IN_FLIGHT.discard(self)

    def on_connection_close(self):
        IN_FLIGHT.discard(self)

    def check_xsrf_cookie(self):
        # A bearer token is not sent by browsers on their own, so a call made
        # with one cannot be a cross-site forgery; cookie calls need the token.
        if self.bearer_token() is not None:
            return
        if self.request.path.startswith("/api/") and not self.get_cookie(sessions.SESSION_COOKIE):
            return  # no credential at all: nothing to forge; the API answers 401

        try:
            super().check_xsrf_cookie()
        except tornado.web.HTTPError:
            raise UserError(
                403,
                "This form has expired or did not come from this site (missing XSRF token). "
                "Reload the page and try again.",
            ) from None

    def can(self, permission):
        """For templates: may the current user do this?"""
        user = self.current_user
        return user is not None and permission in user.permissions

    def require_perm(self, permission):
        """Raise 403 unless the current user has the permission."""
        if not self.can(permission):
            what = PERMISSION_TEXT.get(permission, f"do this (it needs {permission})")
            raise UserError(403, f"Your role ({self.current_user.role}) is not allowed to {what}.")

    def explicit_port(self):
        """The port in the request's Host header, or None when it names none."""
        _, sep, port = self.request.host.rpartition(":")
        return int(port) if sep and port.isdigit() else None

    def request_port(self):
        """The port the client used to reach us (the scheme's default when not explicit)."""
        return self.explicit_port() or DEFAULT_PORTS[self.request.protocol]

    def service_of_host(self, host):
        """The configured service whose host this is, or None."""
        for name, h in self.config.hosts.items():
            if h == host:
                return name
        return None

    def host_url(self, service):
        """Scheme://host[:port] of a service, with the port the client used to reach us."""
        port = self.explicit_port()
        suffix = f":{port}" if port else ""
        return f"{self.request.protocol}://{self.config.hosts[service]}{suffix}"

    def service_url(self, service, path="/"):
        return self.host_url(service) + path

    def login_url(self, next_url=None):
        next_url = next_url or self.request.full_url()
        return self.service_url("auth", "/login") + "?next=" + url_escape(next_url)

    def get_template_namespace(self):
        ns = super().get_template_namespace()
        ns.update(
            can=self.can,
            service_url=self.service_url,
            service=self.service,
            user=self.current_user,
            flash=self.pop_flash(),
            money=lambda d: f"{d:,.2f}",
            when=lambda t: t.strftime("%Y-%m-%d %H:%M %Z") if t else "",
            sentence=sentence,
        )
        return ns

    def render(self, template_name, **kwargs):
        if "/" not in template_name:
            template_name = f"{self.service}/templates/{template_name}"
        return super().render(template_name, **kwargs)

    def flash(self, message, error=False):
        """A one-time message shown on the next page this browser loads on this host."""
        value = ("error|" if error else "ok|") + message[:300]
        self.set_signed_cookie("popug_flash", value, expires_days=None, httponly=True)

    def pop_flash(self):
        """The pending flash as Flash(kind='ok'|'error', message), or None."""
        if not hasattr(self, "_flash"):
            raw = self.get_signed_cookie("popug_flash", max_age_days=1)
            self._flash = None
            if raw:
                kind, _, message = raw.decode("utf-8", "replace").partition("|")
                self._flash = Flash(kind if kind == "error" else "ok", message)
                self.clear_cookie("popug_flash")
        return self._flash

    # Where the error page's "back" link goes; None: this host's start page.
    error_back_service = None
    # The error page's heading; None: the status's usual words.
    error_title = None

    def log_exception(self, typ, value, tb):
        if database_unavailable(value):
            log.warning(
                "%s %s: database unavailable: %s",
                self.request.method,
                self.request.uri,
                str(value).strip()[:200],
            )
            return
        super().log_exception(typ, value, tb)

    def send_error(self, status_code=500, **kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if database_unavailable(exc):
            # An outage, not a bug: say so, and when to come back.
            kwargs["exc_info"] = (UserError, DATABASE_DOWN, None)
            status_code = 503
        super().send_error(status_code, **kwargs)

    def set_error_status(self, error):
        """Status and headers (Retry-After, WWW-Authenticate) of a UserError."""
        self.set_status(error.status)
        for name, value in error.headers.items():
            self.set_header(name, value)

    def error_status_message(self, kwargs):
        exc = kwargs.get("exc_info", (None, None, None))[1]
        status = self.get_status()
        if isinstance(exc, UserError):
            self.set_error_status(exc)
            return exc.status, exc.message
        if isinstance(exc, tornado.web.HTTPError) and status < 500:
            message = exc.log_message if exc.log_message and status != 404 else None
            return status, message or STATUS_TEXT.get(status, self._reason)
        if status >= 500:
            return status, "Something went wrong on our side. It has been logged; please try again."
        return status, STATUS_TEXT.get(status, self._reason)

    def write_error(self, status_code, **kwargs):
        status, message = self.error_status_message(kwargs)
        if self.request.path.startswith("/api/"):
            self.set_header("Content-Type", "application/json; charset=utf-8")
            self.finish(to_json({"error": message}))
            return
        back = self.service_url(self.error_back_service) if self.error_back_service else "/"
        self.render(
            "common/templates/error.html",
            back_url=back,
            status=status,
            title=self.error_title or STATUS_TEXT.get(status, "Error"),
            message=message,
        )


class PageHandler(BaseHandler):
    """A handler that renders HTML pages for a browser."""


class ApiHandler(BaseHandler):
    """A JSON API handler: JSON in, JSON out, errors as {"error": ...}."""

    def set_default_headers(self):
        super().set_default_headers()
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("Cache-Control", "no-store")

    def write_json(self, obj, status=200):
        self.set_status(status)
        self.finish(to_json(obj))

    def write_raw_json(self, text, status=200):
        """Send JSON text that is already encoded (built by the database)."""
        self.set_status(status)
        self.finish(text)

    def json_body(self):
        """The request body as a JSON object (dict); 400 when it is anything else."""
        body = self.request.body
        if not body:
            return {}
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(400, "The request body is not valid UTF-8") from None
        except ValueError:
            raise UserError(400, "The request body is not valid JSON") from None
        except RecursionError:
            raise UserError(400, "The request body is nested too deeply") from None
        if not isinstance(data, dict):
            raise UserError(400, 'The request body must be a JSON object, like {"name": value}')
        return data

    def write_error(self, status_code, **kwargs):
        status, message = self.error_status_message(kwargs)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(to_json({"error": message}))


def auth_required(method):
    """Pages: no session -> redirect to auth's login, coming back here afterwards."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if self.current_user is None:
            if self.request.method in ("GET", "HEAD"):
                self.redirect(self.login_url())
                return None
            # A form posted after the session ended: log in, then back to
            # the page the form was on (the POST itself is not replayed).
            referer = self.request.headers.get("Referer")
            here = self.request.protocol + "://" + self.request.host + "/"
            back = referer if referer and referer.startswith(here) else here
            self.redirect(self.login_url(back))
            return None
        return await method(self, *args, **kwargs)

    return wrapper


def api_auth_required(method):
    """API: no valid session or token -> 401 JSON."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        if self.current_user is None:
            if self.via_bearer:
                message = (
                    "This token is not valid (expired, revoked, or its user deactivated). "
                    "Get a new one from POST /api/v1/tokens on the auth host."
                )
            else:
                message = "Authentication required: send 'Authorization: Bearer <token>'"
            raise UserError(401, message, headers={"WWW-Authenticate": 'Bearer realm="popug"'})
        return await method(self, *args, **kwargs)

    return wrapper


def has_perm(permission):
    """403 with a clear message unless the user's role has `permission` (checked per request)."""

    def decorator(method):
        @functools.wraps(method)
        async def wrapper(self, *args, **kwargs):
            self.require_perm(permission)
            return await method(self, *args, **kwargs)

        return wrapper

    return decorator


# --- handlers every service host mounts ---------------------------------------


class SsoCallbackHandler(PageHandler):
    """/sso/callback?code=..&next=/path — trade auth's code for this host's own session."""

    async def get(self):
        host = self.request.host_name
        ttl = int(self.config.auth.session_hours * 3600)
        token = await sessions.exchange_sso_code(self.db, self.get_argument("code", ""), host, ttl)
        self.set_signed_cookie(
            sessions.SESSION_COOKIE,
            token,
            expires_days=None,
            httponly=True,
            samesite="Lax",
            secure=self.request.protocol == "https",
        )
        self.redirect(safe_local_path(self.get_argument("next", "/")))


def has_control_chars(text):
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def safe_local_path(path):
    """A path on this host only: never //evil.com or a full URL (no open redirect)."""
    if (
        not path
        or not path.startswith("/")
        or path.startswith("//")
        or "\\" in path
        or has_control_chars(path)
        or len(path) > 2000
    ):
        return "/"
    parts = urllib.parse.urlsplit(path)
    if parts.scheme or parts.netloc:
        return "/"
    return path


class LogoutHandler(PageHandler):
    """POST /logout on any host ends the login session and every session made from it."""

    async def post(self):
        user = self.current_user
        if user is not None:
            await sessions.revoke_session_family(self.db, user.root_session_id)
        self.clear_cookie(sessions.SESSION_COOKIE)
        # Logging in again from that page brings the popug back where they were.
        here = self.service_of_host(self.request.host_name) or "landing"
        back = url_escape(self.host_url(here) + "/")
        self.redirect(self.service_url("auth", f"/login?logged_out=1&next={back}"))


class ProbeHandler(BaseHandler):
    """What monitoring calls (/healthz, /metrics): no session, no XSRF, never cached."""

    async def prepare(self):
        IN_FLIGHT.add(self)  # no session lookup: a probe needs none
        self.set_header("Cache-Control", "no-store")

    def duties(self):
        """The background duties of this process (set by `popug serve`)."""
        return self.application.settings.get("popug_duties", [])

    def check_xsrf_cookie(self):
        pass


class HealthHandler(ProbeHandler):
    """/healthz: 200 when the database answers and this service's background duties
    (replication, delivery, the end of day) are fine; 503 with the reasons when not."""

    async def get(self):
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        problems = []
        try:
            await self.db.fetch_one("SELECT 1 AS ok")
        except Exception as e:  # any failure of the database is the answer here
            log.warning("healthz: database check failed: %s", e)
            problems.append(f"database unavailable: {type(e).__name__}")
        service = self.service_of_host(self.request.host_name)
        for duty in self.duties():
            reason = duty.health() if service in (None, duty.service) else None
            if reason:
                problems.append(reason)
        if problems:
            self.set_status(503)
            self.finish("".join(p + "\n" for p in problems))
            return
        self.finish("ok\n")

    async def head(self):
        await self.get()


class MetricsHandler(ProbeHandler):
    """/metrics: this process's figures in the Prometheus text format."""

    async def get(self):
        text = await metrics.render(self.db, self.config, self.duties())
        self.set_header("Content-Type", metrics.prom.CONTENT_TYPE_LATEST)
        self.finish(text)


class NotFoundHandler(PageHandler):
    """The last route of every host group, so no request falls through to another service."""

    def check_xsrf_cookie(self):
        pass  # nothing here to protect: the answer is 404 whatever the method

    def not_found_message(self):
        return "There is no page at this address."

    async def prepare(self):
        await super().prepare()
        raise UserError(404, self.not_found_message())


class UnknownHostHandler(NotFoundHandler):
    """For a Host header that is none of ours."""

    error_back_service = "landing"

    def not_found_message(self):
        return (
            f"This server does not serve the host {self.request.host_name!r}. "
            f"Try {self.config.hosts['landing']}."
        )


class ServiceAbsentHandler(NotFoundHandler):
    """The host of a service this process does not run: say so instead of another page."""

    error_back_service = "landing"

    def initialize(self, name):
        self.name = name

    def not_found_message(self):
        return f"The {self.name} service is not running in this process."
