"""Shared test fixtures: one real PostgreSQL per session, a fresh database per test.

The embedded server (pgserver) starts once; a template database gets the
migrations once; each test gets `CREATE DATABASE ... TEMPLATE` (about 50 ms).
Requests go to the real host names (tasktracker.uberpopug.localhost, ...)
through tornado's OverrideResolver, so the host router is under test too.
"""

import itertools
import json as jsonlib
import os
import secrets
import tempfile
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql
from tornado.httpclient import HTTPRequest
from tornado.netutil import DefaultLoopResolver, OverrideResolver
from tornado.simple_httpclient import SimpleAsyncHTTPClient

from popug.auth import queries as auth_queries
from popug.common.app import make_app
from popug.common.config import load_config
from popug.common.db import Database, apply_migrations
from popug.common.embedded import start_embedded

TEMPLATE_DB = "popug_template"
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg():
    """The session's PostgreSQL: (admin DSN, template DSN)."""
    external = os.environ.get("UBERPOPUG_TEST_DSN")  # a server of your own, if you prefer
    if external:
        admin_dsn = external
    else:
        base = Path(tempfile.mkdtemp(prefix="popug-test-pg-"))
        admin_dsn = start_embedded(base, "postgres")
    template_dsn = dsn_for(admin_dsn, TEMPLATE_DB)
    with admin_connection(admin_dsn) as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE_DB)))
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    apply_migrations(template_dsn)  # closes its connection: the template is then usable
    return admin_dsn, template_dsn


def dsn_for(dsn, dbname):
    """The same server, another database."""
    from psycopg2.extensions import make_dsn, parse_dsn

    params = parse_dsn(dsn)
    params["dbname"] = dbname
    return make_dsn(**params)


class admin_connection:
    def __init__(self, dsn):
        self.conn = psycopg2.connect(dsn)
        self.conn.autocommit = True

    def __enter__(self):
        return self.conn.cursor()

    def __exit__(self, *exc):
        self.conn.close()


@pytest.fixture
def db_dsn(pg):
    """A fresh, migrated database for this test; dropped afterwards."""
    admin_dsn, _ = pg
    name = f"popug_test_{os.getpid()}_{next(_counter)}"
    with admin_connection(admin_dsn) as cur:
        cur.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE_DB)
            )
        )
    yield dsn_for(admin_dsn, name)
    with admin_connection(admin_dsn) as cur:
        cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def config(db_dsn, tmp_path):
    return load_config(
        None,
        environ={},
        overrides={
            "database.dsn": db_dsn,
            "data_dir": str(tmp_path / "var"),
            "auth.bcrypt_cost": 4,
            "database.pool_max": 20,
        },
    )


@pytest.fixture
def services():
    """Override in a test module to mount fewer services."""
    return "all"


@pytest.fixture
def db(io_loop, config):
    database = io_loop.run_sync(lambda: Database.connect(config.database.dsn, 1, 20, 30))
    yield database
    io_loop.run_sync(database.close)


@pytest.fixture
def app(config, db, services):
    return make_app(config, db, services, cookie_secret=secrets.token_hex(32))


class Response:
    def __init__(self, r):
        self.raw = r
        self.status = r.code
        self.headers = r.headers
        self.body = r.body or b""
        self.text = self.body.decode("utf-8", "replace")
        self.url = r.effective_url

    def json(self):
        return jsonlib.loads(self.body)

    @property
    def location(self):
        return self.headers.get("Location")

    def __repr__(self):
        return f"<Response {self.status} {self.url} {self.text[:200]!r}>"


class Browser:
    """A client that behaves like a browser: a cookie jar per host, XSRF, redirects."""

    def __init__(self, env):
        self.env = env
        self.cookies = {}  # host -> {name: value}

    def url(self, service, path):
        return f"http://{self.env.config.hosts[service]}:{self.env.port}{path}"

    def _cookie_header(self, host):
        jar = self.cookies.get(host, {})
        return "; ".join(f"{k}={v}" for k, v in jar.items())

    def _store(self, host, response):
        for header in response.headers.get_list("Set-Cookie"):
            c = SimpleCookie()
            c.load(header)
            for name, morsel in c.items():
                jar = self.cookies.setdefault(host, {})
                if morsel["max-age"] == "0" or (morsel["expires"] and "1970" in morsel["expires"]):
                    jar.pop(name, None)
                elif morsel["expires"] and _is_past(morsel["expires"]):
                    jar.pop(name, None)
                else:
                    jar[name] = morsel.value

    def xsrf(self, host):
        jar = self.cookies.setdefault(host, {})
        if "_xsrf" not in jar:
            # Tornado accepts any token that matches between cookie and form.
            jar["_xsrf"] = secrets.token_hex(16)
        return jar["_xsrf"]

    async def request(
        self,
        method,
        url,
        form=None,
        json=None,
        headers=None,
        follow=True,
        body=None,
        xsrf=True,
        max_redirects=10,
    ):
        headers = dict(headers or {})
        for _ in range(max_redirects + 1):
            host = urllib.parse.urlsplit(url).hostname
            h = dict(headers)
            if method not in ("GET", "HEAD") and xsrf:
                h.setdefault("X-XSRFToken", self.xsrf(host))
            data = body
            if form is not None:
                form = dict(form)
                if xsrf:
                    form.setdefault("_xsrf", self.xsrf(host))
                data = urllib.parse.urlencode(form)
                h.setdefault("Content-Type", "application/x-www-form-urlencoded")
            elif json is not None:
                data = jsonlib.dumps(json)
                h.setdefault("Content-Type", "application/json")
            if method in ("POST", "PUT", "PATCH") and data is None:
                data = ""
            cookie = self._cookie_header(host)
            if cookie:
                h["Cookie"] = cookie
            r = await self.env.http.fetch(
                HTTPRequest(
                    url,
                    method=method,
                    headers=h,
                    body=data,
                    follow_redirects=False,
                    request_timeout=60,
                ),
                raise_error=False,
            )
            self._store(host, r)
            resp = Response(r)
            if follow and r.code in (301, 302, 303, 307) and resp.location:
                url = urllib.parse.urljoin(url, resp.location)
                method, form, json, body = "GET", None, None, None
                continue
            return resp
        raise AssertionError("too many redirects")

    async def get(self, service, path, **kw):
        return await self.request("GET", self.url(service, path), **kw)

    async def post(self, service, path, **kw):
        return await self.request("POST", self.url(service, path), **kw)

    async def login(self, username, password, service="tracker", path="/"):
        """The SSO flow as a browser does it: page -> auth login -> code -> page."""
        r = await self.get(service, path)
        assert r.url.startswith(self.url("auth", "/login")), r
        next_url = urllib.parse.parse_qs(urllib.parse.urlsplit(r.url).query)["next"][0]
        r = await self.request(
            "POST",
            self.url("auth", "/login"),
            form={"username": username, "password": password, "next": next_url},
        )
        return r


def _is_past(expires):
    import email.utils
    import time

    try:
        return email.utils.parsedate_to_datetime(expires).timestamp() < time.time()
    except (TypeError, ValueError):
        return False


class Api:
    """JSON calls with a bearer token (or none)."""

    def __init__(self, env, token=None):
        self.env = env
        self.token = token
        self.browser = Browser(env)

    async def call(self, method, service, path, json=None, body=None, headers=None):
        h = dict(headers or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return await self.browser.request(
            method,
            self.browser.url(service, path),
            json=json,
            body=body,
            headers=h,
            follow=False,
            xsrf=False,
        )

    async def get(self, service, path, **kw):
        return await self.call("GET", service, path, **kw)

    async def post(self, service, path, json=None, **kw):
        return await self.call("POST", service, path, json=json, **kw)

    async def patch(self, service, path, json=None, **kw):
        return await self.call("PATCH", service, path, json=json, **kw)


class Env:
    """What a test needs: the database, the config, users by role, clients."""

    PASSWORD = "correct horse battery"

    def __init__(self, config, db, port):
        self.config = config
        self.db = db
        self.port = port
        mapping = {host: "127.0.0.1" for host in config.hosts.values()}
        mapping["unknown.example"] = "127.0.0.1"
        self.http = SimpleAsyncHTTPClient(
            force_instance=True,
            max_clients=50,
            resolver=OverrideResolver(resolver=DefaultLoopResolver(), mapping=mapping),
        )
        self._n = itertools.count(1)

    async def user(self, role="worker", username=None, password=None, email=None):
        username = username or f"{role}{next(self._n)}"
        return await auth_queries.create_user(
            self.db,
            username,
            password or self.PASSWORD,
            role,
            email or f"{username}@popug.test",
            self.config.auth.bcrypt_cost,
        )

    async def token_for(self, username, password=None):
        r = await Api(self).post(
            "auth",
            "/api/v1/tokens",
            json={"username": username, "password": password or self.PASSWORD},
        )
        assert r.status == 201, r
        return r.json()["token"]

    async def api(self, role="worker", **kw):
        """An API client logged in as a new user of `role`; .user is that user."""
        u = await self.user(role, **kw)
        client = Api(self, await self.token_for(u.username))
        client.user = u
        return client

    async def browser(self, role="worker", **kw):
        """A browser logged in (through SSO) as a new user of `role`."""
        u = await self.user(role, **kw)
        b = Browser(self)
        r = await b.login(u.username, self.PASSWORD)
        assert r.status == 200, r
        b.user = u
        return b

    async def scalar(self, query, *params):
        row = await self.db.fetch_one(query, *params)
        return next(iter(row.values()))


@pytest.fixture
def env(config, db, http_server, http_port):
    e = Env(config, db, http_port)
    yield e
    e.http.close()
