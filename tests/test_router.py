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


@pytest.mark.gen_test
async def test_unbuilt_service_host_is_a_clear_404(env):
    r = await Browser(env).get("accounting", "/")
    assert r.status == 404
    assert "The accounting service is not available yet" in r.text


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
