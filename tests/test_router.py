"""The host router: each service on its host, nothing falling through to another."""

import pytest

from tests.conftest import Browser


@pytest.mark.gen_test
async def test_landing_page_links_every_service(env):
    r = await Browser(env).get("landing", "/")
    assert r.status == 200
    for host in ("tasktracker", "accounting", "analytics"):
        assert f'href="http://{host}.uberpopug.localhost:{env.port}/"' in r.text


@pytest.mark.gen_test
async def test_hosts_match_without_port_and_case_insensitively(env):
    b = Browser(env)
    r = await b.request(
        "GET", f"http://127.0.0.1:{env.port}/login", headers={"Host": "AUTH.UberPopug.Localhost"}
    )
    assert r.status == 200
    assert "Log in to UberPopug" in r.text


@pytest.mark.gen_test
async def test_a_path_of_another_service_is_404_not_that_service(env):
    b = Browser(env)
    # /login exists on auth only; on the tracker host it must not fall through.
    r = await b.request(
        "GET", f"http://127.0.0.1:{env.port}/login", headers={"Host": env.config.hosts["tracker"]}
    )
    assert r.status == 404
    assert "Log in to UberPopug" not in r.text
    assert "There is no page at this address" in r.text
    # The landing page's / is not served on the auth host either: auth has its own /.
    r = await b.get("auth", "/no/such/page")
    assert r.status == 404


@pytest.mark.gen_test
async def test_unknown_host_gets_the_landing_page(env):
    r = await Browser(env).request(
        "GET", f"http://127.0.0.1:{env.port}/", headers={"Host": "unknown.example"}
    )
    assert r.status == 200
    assert "Task tracker" in r.text
    r = await Browser(env).request(
        "GET", f"http://127.0.0.1:{env.port}/tasks", headers={"Host": "unknown.example"}
    )
    assert r.status == 404
    assert "does not serve the host" in r.text


@pytest.mark.gen_test
async def test_healthz_on_every_host(env):
    b = Browser(env)
    for service in ("landing", "auth", "tracker"):
        r = await b.get(service, "/healthz")
        assert (r.status, r.text) == (200, "ok\n")


@pytest.mark.gen_test
async def test_unknown_api_path_answers_json(env):
    r = await Browser(env).get("tracker", "/api/v1/nothing-here")
    assert r.status == 404
    assert "error" in r.json()


class TestTrackerOnly:
    @pytest.fixture
    def services(self):
        return ["tracker"]

    @pytest.mark.gen_test
    async def test_only_the_tracker_group_is_mounted(self, env):
        b = Browser(env)
        assert (await b.get("tracker", "/healthz")).status == 200
        r = await b.get("auth", "/login")
        assert r.status == 404 and "not running in this process" in r.text
        r = await b.get("tracker", "/")
        # Still redirects to auth's login, which another process serves.
        assert r.status == 404 and r.url.startswith(b.url("auth", "/login"))


@pytest.mark.gen_test
async def test_database_outage_is_a_503_with_retry_after_not_a_500(env, pg):
    from tests.conftest import admin_connection

    b = await env.browser("worker")
    admin_dsn, _ = pg
    dbname = env.config.database.dsn.split("dbname=")[1].split()[0]
    # Cut every connection of this test's pool, and refuse new ones.
    with admin_connection(admin_dsn) as cur:
        cur.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS false')
        cur.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
    try:
        r = await b.get("tracker", "/")
        assert r.status == 503, r
        assert "database is not answering" in r.text and r.headers["Retry-After"] == "5"
        r = await b.get("tracker", "/api/v1/tasks")
        assert r.status == 503 and "database is not answering" in r.json()["error"]
        assert (await b.get("tracker", "/healthz")).status == 503
    finally:
        with admin_connection(admin_dsn) as cur:
            cur.execute(f'ALTER DATABASE "{dbname}" WITH ALLOW_CONNECTIONS true')
    # Back without a restart.
    assert (await b.get("tracker", "/healthz")).status == 200


@pytest.mark.gen_test
async def test_static_files_and_a_nul_in_their_path(env):
    b = Browser(env)
    r = await b.get("tracker", "/static/style.css")
    assert r.status == 200 and "--accent" in r.text
    for url in (
        b.url("tracker", "/static/%00"),
        b.url("tracker", "/static/style.css%00.css"),
        f"http://127.0.0.1:{env.port}/static/%00",
    ):
        r = await b.request(
            "GET", url, headers={"Host": "unknown.example"} if "127.0.0.1" in url else None
        )
        assert r.status == 404, url
