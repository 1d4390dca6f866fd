"""Config: defaults, the YAML file, POPUG_* variables, and one clear line per mistake."""

import pytest

from popug.common.config import ConfigError, ensure_secret_file, load_config


def test_defaults_give_the_localhost_hosts_on_8888():
    c = load_config(None, environ={})
    assert c.server.port == 8888 and c.server.address == "127.0.0.1"
    assert c.hosts["landing"] == "uberpopug.localhost"
    assert c.hosts["tracker"] == "tasktracker.uberpopug.localhost"
    assert c.hosts["auth"] == "auth.uberpopug.localhost"
    assert c.database.dsn is None and c.server.cookie_secret is None


def test_the_shipped_config_file_is_valid_and_matches_the_defaults():
    from popug.common.config import default_config_path

    assert load_config(default_config_path(), environ={}) == load_config(None, environ={})


def test_domain_moves_every_host_and_env_overrides_the_file(tmp_path):
    f = tmp_path / "popug.yaml"
    f.write_text("domain: uberpopug.com\nserver:\n  port: 9000\nhosts:\n  tracker: Tasks.Example\n")
    c = load_config(f, environ={"POPUG_SERVER__PORT": "9100", "POPUG_AUTH__BCRYPT_COST": "10"})
    assert c.hosts["accounting"] == "accounting.uberpopug.com"
    assert c.hosts["tracker"] == "tasks.example"
    assert c.server.port == 9100 and c.auth.bcrypt_cost == 10
    # Command-line flags win over both.
    assert (
        load_config(
            f, environ={"POPUG_SERVER__PORT": "9100"}, overrides={"server.port": 9200}
        ).server.port
        == 9200
    )


def test_a_dsn_in_the_environment_stays_a_string():
    c = load_config(None, environ={"POPUG_DATABASE__DSN": "host=db port=5432 dbname=popug"})
    assert c.database.dsn == "host=db port=5432 dbname=popug"


@pytest.mark.parametrize(
    "yaml_text, environ, message",
    [
        ("server:\n  port: eighty\n", {}, "server.port: expected a TCP port number 1-65535 (int)"),
        ("server:\n  port: 70000\n", {}, "server.port: expected a TCP port number"),
        ("server:\n  port: true\n", {}, "server.port: expected"),
        ("server:\n  prot: 80\n", {}, "server.prot: unknown key"),
        ("colour: blue\n", {}, "colour: unknown key"),
        ("auth:\n  bcrypt_cost: 2\n", {}, "auth.bcrypt_cost: expected an integer 4-31"),
        ("server: 8080\n", {}, "server: expected a mapping"),
        ("server:\n  cookie_secret: short\n", {}, "server.cookie_secret: expected a secret of 32+"),
        ("- a\n- b\n", {}, "expected a mapping of keys at the top level"),
        ("server: [\n", {}, "not valid YAML"),
        ("", {"POPUG_SERVER__PORT": "abc"}, "server.port: expected"),
        ("", {"POPUG_NOPE": "1"}, "POPUG_NOPE: unknown key nope"),
        ("", {"POPUG_SERVER": "1"}, "POPUG_SERVER: server is a section"),
    ],
)
def test_mistakes_name_the_key_and_what_was_expected(tmp_path, yaml_text, environ, message):
    f = tmp_path / "popug.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(f, environ=environ)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_generated_secret_is_stable_and_private(tmp_path):
    import os
    import stat

    path = tmp_path / "d" / "cookie-secret"
    first = ensure_secret_file(path)
    assert len(first) >= 32 and ensure_secret_file(path) == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_secret_generated_by_racing_processes_is_one_complete_secret(tmp_path):
    import multiprocessing

    path = tmp_path / "cookie-secret"
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(8) as pool:
        secrets_seen = pool.map(ensure_secret_file, [path] * 32)
    assert len(set(secrets_seen)) == 1 and len(secrets_seen[0]) >= 32
    assert [p.name for p in tmp_path.iterdir()] == ["cookie-secret"]


@pytest.mark.parametrize(
    "environ, message",
    [
        (
            {"POPUG_HOSTS__AUTH": "uberpopug.localhost"},
            "hosts.auth: uberpopug.localhost is already the host of landing",
        ),
        (
            {"POPUG_HOSTS__TRACKER": "http://tasks.example.com:80/"},
            "hosts.tracker: expected a bare host",
        ),
        ({"POPUG_DOMAIN": "Popug Test"}, "domain: expected a host name"),
    ],
)
def test_hosts_must_be_bare_names_and_distinct(environ, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, environ=environ)
    assert message in str(e.value)


def test_log_level_is_case_insensitive():
    assert load_config(None, environ={"POPUG_LOG_LEVEL": "debug"}).log_level == "DEBUG"
