"""Configuration: YAML file, then POPUG_* environment variables, then a strict check.

Every key has a type and a default in SCHEMA; a wrong type, an unknown key or a
missing required value stops the start with one line that names the key.
Environment variables name nested keys with double underscores:
POPUG_SERVER__PORT=9000, POPUG_DATABASE__DSN=..., POPUG_DATA_DIR=/srv/popug.
"""

import os
import re
import secrets
from pathlib import Path

import yaml

from popug import REPO_DIR, SERVICES
from popug.common import days


class ConfigError(Exception):
    """A configuration problem, phrased for the person who has to fix it."""


class Required:
    """Marker for a key that has no default."""


def _positive(v):
    return v > 0


def _is_port(v):
    return 0 < v < 65536


def _known_zone(name):
    try:
        days.zone(name)
    except ValueError:
        return False
    return True


# key -> (type or tuple of types, default, check or None, what is expected)
SCHEMA = {
    "domain": (str, "uberpopug.localhost", None, "a domain name such as uberpopug.com"),
    "data_dir": (str, "var", None, "a folder for the embedded database, secrets and mail"),
    "log_level": (
        str,
        "INFO",
        lambda v: v in ("DEBUG", "INFO", "WARNING", "ERROR"),
        "one of DEBUG, INFO, WARNING, ERROR",
    ),
    "hosts": {
        name: ((str, type(None)), None, None, "a host name, or null to derive it from domain")
        for name in SERVICES
    },
    "server": {
        "address": (str, "127.0.0.1", None, "an IP address to listen on"),
        "port": (int, 8888, _is_port, "a TCP port number 1-65535"),
        "xheaders": (bool, False, None, "true behind a reverse proxy that sets X-Real-Ip"),
        "public_scheme": (
            str,
            "http",
            lambda v: v in ("http", "https"),
            "http or https, for links in emails",
        ),
        "public_port": (
            (int, type(None)),
            None,
            lambda v: v is None or _is_port(v),
            "the port in links in emails (1-65535), or null for this process's port",
        ),
        "cookie_secret": (
            (str, type(None)),
            None,
            lambda v: v is None or len(v) >= 32,
            "a secret of 32+ characters, or null to generate one into the data folder",
        ),
    },
    "database": {
        "dsn": ((str, type(None)), None, None, "a libpq DSN, or null for the embedded server"),
        "name": (str, "popug", None, "the database name on the embedded server"),
        "pool_min": (int, 1, lambda v: v >= 0, "an integer >= 0"),
        "pool_max": (int, 10, _positive, "an integer > 0"),
        "timeout_s": ((int, float), 30, _positive, "seconds > 0"),
        "acquire_timeout_s": (
            (int, float),
            5,
            _positive,
            "seconds > 0 a request waits for a free connection before it gets a 503",
        ),
    },
    "auth": {
        "bcrypt_cost": (int, 12, lambda v: 4 <= v <= 31, "an integer 4-31"),
        "session_hours": ((int, float), 168, _positive, "hours > 0"),
        "token_days": ((int, float), 30, _positive, "days > 0"),
        "code_ttl_s": (int, 60, _positive, "seconds > 0"),
        "throttle_window_s": (int, 900, _positive, "seconds > 0"),
        "throttle_per_user": (int, 5, _positive, "failed logins per user per window, > 0"),
        "throttle_per_address": (int, 20, _positive, "failed logins per address per window, > 0"),
    },
    "replication": {
        "interval_s": ((int, float), 5, _positive, "seconds > 0 between cycles"),
        # name -> {schema, dsn (null: the master database), tables: {table: [columns]}}
        "replicas": ((dict, type(None)), None, None, "a mapping of replica names to settings"),
    },
    "accounting": {
        "timezone": (str, "UTC", _known_zone, "an IANA time zone such as Europe/Berlin"),
        "day_cutoff": (
            str,
            "00:00",
            lambda v: days.CUTOFF_RE.match(v) is not None,
            'a quoted local time "HH:MM" (unquoted, YAML reads 12:30 as 750)',
        ),
        "replica": (str, "accounting", None, "the name of the replica accounting reads"),
        "close_check_s": ((int, float), 30, _positive, "seconds > 0 between end-of-day checks"),
    },
    "analytics": {
        "replica": (str, "analytics", None, "the name of the replica analytics reads"),
    },
    "notifier": {
        "transport": (str, "maildir", lambda v: v in ("maildir", "smtp"), "maildir or smtp"),
        "from_address": (
            (str, type(None)),
            None,
            lambda v: v is None or "@" in v,
            "an email address, or null for popug@<domain>",
        ),
        "admins": (
            list,
            [],
            lambda v: all(isinstance(a, str) and "@" in a for a in v),
            "a list of email addresses",
        ),
        "interval_s": ((int, float), 2, _positive, "seconds > 0"),
        "batch": (int, 50, _positive, "messages per delivery pass, > 0"),
        "max_attempts": (int, 6, _positive, "an integer > 0"),
        "backoff_s": ((int, float), 30, _positive, "seconds > 0 (doubles after each failure)"),
        "smtp": {
            "host": (str, "localhost", None, "an SMTP server's host name"),
            "port": (int, 25, _is_port, "a TCP port number 1-65535"),
            "starttls": (bool, False, None, "true to upgrade the connection with STARTTLS"),
            "username": ((str, type(None)), None, None, "a user name, or null for no login"),
            "password": ((str, type(None)), None, None, "a password, or null"),
            "timeout_s": ((int, float), 20, _positive, "seconds > 0 for each SMTP operation"),
        },
    },
}

DEFAULT_HOST_PREFIX = {
    "landing": "",
    "auth": "auth.",
    "tracker": "tasktracker.",
    "accounting": "accounting.",
    "analytics": "analytics.",
    "replicator": "replicator.",
    "notifier": "notifier.",
}


HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


class Config(dict):
    """Nested dict with attribute access: config.server.port."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


# What a replica may hold: never a password hash, a session or a token
# (those tables and columns are simply not here).
REPLICABLE_COLUMNS = {
    "users": ["id", "username", "role", "email", "active", "created_at", "updated_at"],
    "tasks": [
        "id",
        "title",
        "description",
        "status",
        "assignee_id",
        "assign_fee",
        "reward",
        "created_by",
        "created_at",
        "assigned_at",
        "completed_at",
    ],
    "ledger": ["id", "user_id", "task_id", "kind", "amount", "created_at", "day"],
    "closed_days": [
        "id",
        "day",
        "starts_at",
        "ends_at",
        "closed_at",
        "early",
        "popugs_paid",
        "total_paid",
        "closed_by",
    ],
}
# What each report service reads from its replica.
REPORT_NEEDS = {
    "accounting": {
        "ledger": ["user_id", "task_id", "kind", "amount", "created_at", "day"],
        "tasks": ["title", "description"],
        "users": ["username", "role", "active"],
        "closed_days": ["day", "closed_at", "early", "popugs_paid", "total_paid"],
    },
    "analytics": {
        "ledger": ["user_id", "kind", "amount", "created_at", "day"],
        "tasks": ["title", "status", "reward", "completed_at"],
        "closed_days": ["day", "closed_at", "early"],
    },
}
DEFAULT_REPLICAS = {
    "accounting": {"schema": "accounting", "dsn": None, "tables": REPLICABLE_COLUMNS},
    "analytics": {"schema": "analytics", "dsn": None, "tables": REPLICABLE_COLUMNS},
}
SCHEMA_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def check_replicas(value):
    """replication.replicas, checked and completed (null: the two default replicas)."""
    if value is None:
        value = DEFAULT_REPLICAS
    out = {}
    for name, spec in value.items():
        key = f"replication.replicas.{name}"
        if not isinstance(name, str) or not SCHEMA_NAME_RE.match(name):
            raise ConfigError(f"{key}: a replica name is lower-case letters, digits and _")
        if not isinstance(spec, dict):
            raise ConfigError(f"{key}: expected a mapping with schema, dsn and tables")
        unknown = sorted(set(spec) - {"schema", "dsn", "tables"})
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]}: unknown key (known keys: schema, dsn, tables)")
        schema = spec.get("schema", name)
        if not isinstance(schema, str) or not SCHEMA_NAME_RE.match(schema) or schema == "core":
            raise ConfigError(
                f"{key}.schema: expected a schema name other than core, got {schema!r}"
            )
        dsn = spec.get("dsn")
        if dsn is not None and not isinstance(dsn, str):
            raise ConfigError(f"{key}.dsn: expected a libpq DSN or null")
        tables = spec.get("tables") or REPLICABLE_COLUMNS
        if not isinstance(tables, dict):
            raise ConfigError(f"{key}.tables: expected a mapping of table to column list")
        checked = {}
        for table, cols in tables.items():
            if table not in REPLICABLE_COLUMNS:
                raise ConfigError(
                    f"{key}.tables.{table}: not replicable (tables: "
                    f"{', '.join(REPLICABLE_COLUMNS)})"
                )
            cols = REPLICABLE_COLUMNS[table] if cols is None else cols
            if not isinstance(cols, list) or not cols:
                raise ConfigError(f"{key}.tables.{table}: expected a list of columns")
            bad = [c for c in cols if c not in REPLICABLE_COLUMNS[table]]
            if bad:
                raise ConfigError(
                    f"{key}.tables.{table}: column {bad[0]!r} cannot be replicated "
                    f"(allowed: {', '.join(REPLICABLE_COLUMNS[table])})"
                )
            checked[table] = ["id"] + [c for c in cols if c != "id"]
        out[name] = {"schema": schema, "dsn": dsn, "tables": checked}
    schemas = [(r["dsn"], r["schema"]) for r in out.values()]
    if len(set(schemas)) != len(schemas):
        raise ConfigError("replication.replicas: two replicas share one schema in one database")
    return out


def _type_name(t):
    if isinstance(t, tuple):
        return " or ".join("null" if x is type(None) else x.__name__ for x in t)
    return t.__name__


def _check(schema, values, prefix):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys")
    unknown = sorted(set(values) - set(schema))
    if unknown:
        known = ", ".join(prefix + k for k in schema)
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key (known keys: {known})")
    out = Config()
    for key, spec in schema.items():
        name = prefix + key
        if isinstance(spec, dict):
            out[key] = _check(spec, values.get(key) or {}, name + ".")
            continue
        typ, default, check, expected = spec
        value = values.get(key, default)
        if value is Required:
            raise ConfigError(f"{name}: missing value, expected {expected}")
        # bool is an int in Python; a port of `true` is still wrong.
        bad_bool = (
            isinstance(value, bool)
            and typ is not bool
            and bool not in (typ if isinstance(typ, tuple) else (typ,))
        )
        if not isinstance(value, typ) or bad_bool:
            raise ConfigError(f"{name}: expected {expected} ({_type_name(typ)}), got {value!r}")
        if check and not check(value):
            raise ConfigError(f"{name}: expected {expected}, got {value!r}")
        out[key] = list(value) if isinstance(value, list) else value
    return out


def _set_path(values, path, value, origin):
    dotted = ".".join(path)
    schema, node = SCHEMA, values
    for i, part in enumerate(path):
        spec = schema.get(part)
        if spec is None:
            raise ConfigError(f"{origin}: unknown key {dotted}")
        if i == len(path) - 1:
            if isinstance(spec, dict):
                raise ConfigError(f"{origin}: {dotted} is a section; set one of its keys")
            node[part] = value
        else:
            if not isinstance(spec, dict):
                raise ConfigError(f"{origin}: unknown key {dotted}")
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node, schema = node[part], spec


def env_overrides(environ):
    """Yield (path, value, variable) for each POPUG_* variable; values parsed as YAML scalars."""
    for var, raw in sorted(environ.items()):
        if not var.startswith("POPUG_"):
            continue
        path = var[len("POPUG_") :].lower().split("__")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        # A DSN or secret that happens to look like YAML stays a string; a
        # flow list ("[a@x.com, b@y.com]") is a list.
        if not isinstance(value, (int, float, bool, type(None), list)):
            value = raw
        if re.fullmatch(r"\d+:\d+", raw.strip()):
            value = raw.strip()  # a time of day, not YAML 1.1's base-60 number
        yield path, value, var


def load_config(path=None, environ=None, overrides=None):
    """Read the YAML file (optional), apply POPUG_* variables and overrides, check everything.

    `overrides` maps dotted keys to values (command line flags win over everything).
    """
    environ = os.environ if environ is None else environ
    values = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{path}: cannot read config file ({e.strerror})") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}:{where} not valid YAML") from None
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of keys at the top level")
    for keys, value, var in env_overrides(environ):
        _set_path(values, keys, value, var)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            _set_path(values, dotted.split("."), value, "command line")
    if isinstance(values.get("log_level"), str):
        values["log_level"] = values["log_level"].upper()
    config = _check(SCHEMA, values, "")
    if not HOSTNAME_RE.match(config.domain):
        raise ConfigError(
            f"domain: expected a host name such as uberpopug.com, got {config.domain!r}"
        )
    config["domain"] = config.domain.lower()
    seen = {}
    for name in SERVICES:
        if config.hosts[name] is None:
            config.hosts[name] = DEFAULT_HOST_PREFIX[name] + config.domain
        host = config.hosts[name].lower()
        if not HOSTNAME_RE.match(host):
            raise ConfigError(
                f"hosts.{name}: expected a bare host name such as "
                f"tasks.example.com (no scheme, port or path), got {host!r}"
            )
        if host in seen:
            raise ConfigError(
                f"hosts.{name}: {host} is already the host of {seen[host]}; "
                "each service needs its own"
            )
        seen[host] = name
        config.hosts[name] = host
    data_dir = Path(config.data_dir)
    if not data_dir.is_absolute():
        # Relative to where the user runs the command, like any CLI path.
        data_dir = Path.cwd() / data_dir
    config["data_dir"] = str(data_dir)
    config.replication["replicas"] = check_replicas(config.replication.replicas)
    for service, needs in REPORT_NEEDS.items():
        name = config[service].replica
        replica = config.replication.replicas.get(name)
        if replica is None:
            raise ConfigError(
                f"{service}.replica: no replica named {name!r} "
                f"(replicas: {', '.join(config.replication.replicas)})"
            )
        for table, needed in needs.items():
            missing = [c for c in needed if c not in replica["tables"].get(table, [])]
            if missing:
                raise ConfigError(
                    f"replication.replicas.{name}.tables.{table}: "
                    f"{service} needs column {missing[0]!r}"
                )
    if config.notifier.from_address is None:
        config.notifier["from_address"] = f"UberPopug <popug@{config.domain}>"
    return config


def default_config_path():
    """config/popug.yaml of the checkout, when present."""
    p = REPO_DIR / "config" / "popug.yaml"
    return p if p.exists() else None


def ensure_secret_file(path, nbytes=32):
    """Return the secret stored at `path`, creating it (mode 0600) on first use."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written whole to a private temporary file, then linked into place:
        # a second process starting at the same moment either wins the link
        # or reads the complete secret of the one that did, never a half file.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(nbytes) + "\n")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    secret = path.read_text().strip()
    if not secret:
        raise ConfigError(f"{path}: the secret file is empty; delete it to generate a new one")
    return secret
