"""Auth's rules in SQL: users, passwords, login throttling, the initial admin."""

import asyncio
import functools
import logging
import os
import re
import secrets

import bcrypt
import psycopg2

from popug.common import sessions
from popug.common.errors import UserError
from popug.common.web import check_text, is_text

log = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")
# A plain ASCII address (local part of RFC 5322 atom characters and dots, a
# host name): what every mail server and library takes as it is.
EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$"
)
MIN_PASSWORD = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 raises beyond it


# --- passwords: bcrypt is slow on purpose, so it runs in a worker thread ------


def _hash_sync(password, cost):
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(cost)).decode("ascii")


def _check_sync(password, password_hash):
    data = password.encode("utf-8", "surrogateescape")
    if len(data) > MAX_PASSWORD_BYTES:
        return False  # could never have been set; at login it is just wrong
    return bcrypt.checkpw(data, password_hash.encode("ascii"))


async def hash_password(password, cost):
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(_hash_sync, password, cost)
    )


async def check_password(password, password_hash):
    return await asyncio.get_running_loop().run_in_executor(
        None, functools.partial(_check_sync, password, password_hash)
    )


# Compared against when the username does not exist, so an unknown user takes
# as long to refuse as a wrong password (no username probing by timing).
_DUMMY_HASH = {}


def dummy_hash(cost):
    if cost not in _DUMMY_HASH:
        _DUMMY_HASH[cost] = _hash_sync(secrets.token_hex(8), cost)
    return _DUMMY_HASH[cost]


def validate_password(password):
    if not isinstance(password, str):
        raise UserError(400, "password must be a string")
    if not is_text(password):
        raise UserError(400, "password must be valid text without NUL characters")
    size = len(password.encode("utf-8", "surrogateescape"))
    if size > MAX_PASSWORD_BYTES:
        raise UserError(
            400,
            f"password is too long: {size} bytes in UTF-8, at most {MAX_PASSWORD_BYTES} "
            "(bcrypt ignores anything beyond that)",
        )
    if len(password) < MIN_PASSWORD:
        raise UserError(400, f"password is too short: at least {MIN_PASSWORD} characters")
    return password


def validate_username(username):
    username = check_text(username, "username", 32, required=True)
    if not USERNAME_RE.match(username):
        raise UserError(
            400,
            "username may use letters, digits, '.', '_' and '-', start with a letter or "
            "digit, and be at most 32 characters",
        )
    return username


def validate_email(email):
    email = check_text(email, "email", 254, required=True)
    if not EMAIL_RE.match(email):
        raise UserError(400, f"email does not look like an address: {email!r}")
    return email


# --- users ---------------------------------------------------------------------

USER_COLUMNS = "id, username, role, email, active, created_at"


async def list_roles(db):
    return await db.fetch_all("SELECT name, title, assignable FROM core.roles ORDER BY name")


async def require_role(db, role):
    if not isinstance(role, str) or "\x00" in role:
        raise UserError(400, "role must be a role name")
    roles = [r.name for r in await list_roles(db)]
    if role not in roles:
        raise UserError(400, f"unknown role {role!r}; roles are: {', '.join(roles)}")
    return role


async def list_users(db):
    return await db.fetch_all(f"SELECT {USER_COLUMNS} FROM core.users ORDER BY lower(username)")


async def get_user(db, user_id):
    return await db.fetch_one(
        f"SELECT {USER_COLUMNS} FROM core.users WHERE id = %s", user_id, missing="No such user"
    )


async def create_user(db, username, password, role, email, cost):
    """Check everything, then insert; 409 when the username is taken (any case)."""
    username = validate_username(username)
    validate_password(password)
    email = validate_email(email)
    role = await require_role(db, role)
    password_hash = await hash_password(password, cost)
    try:
        return await db.fetch_one(
            "INSERT INTO core.users (username, password_hash, role, email)"
            f" VALUES (%s, %s, %s, %s) RETURNING {USER_COLUMNS}",
            username,
            password_hash,
            role,
            email,
        )
    except psycopg2.errors.UniqueViolation:
        raise UserError(409, f"the username {username!r} is already taken") from None


async def update_user(db, actor, user_id, role=None, active=None):
    """Change a user's role and/or active flag. Deactivation also ends their sessions."""
    if role is None and active is None:
        raise UserError(400, "nothing to change: send role and/or active")
    if role is not None:
        role = await require_role(db, role)
    if active is not None and not isinstance(active, bool):
        raise UserError(400, "active must be true or false")
    if user_id == actor.id and (active is False or (role is not None and role != actor.role)):
        raise UserError(
            409, "You cannot deactivate yourself or change your own role; ask another admin."
        )
    async with db.transaction() as cur:
        # Lock the actor and the target (in id order, so two admins acting on
        # each other queue instead of deadlocking), then check the actor may
        # still manage users: of two admins demoting each other at once, the
        # second finds itself demoted.
        await db.run(
            "SELECT 1 FROM core.users WHERE id IN (%s, %s) ORDER BY id FOR UPDATE",
            actor.id,
            user_id,
            cur=cur,
        )
        allowed = await db.fetch_optional(
            "SELECT 1 AS yes FROM core.users u JOIN core.role_permissions rp ON rp.role = u.role"
            " WHERE u.id = %s AND u.active AND rp.permission = 'can_manage_users'",
            actor.id,
            cur=cur,
        )
        if allowed is None:
            raise UserError(403, "You are no longer allowed to manage users.")
        user = await db.fetch_one(
            "UPDATE core.users SET role = coalesce(%s, role), active = coalesce(%s, active),"
            f" updated_at = now() WHERE id = %s RETURNING {USER_COLUMNS}",
            role,
            active,
            user_id,
            cur=cur,
            missing="No such user",
        )
        if active is False:
            await db.run(
                "UPDATE core.sessions SET revoked_at = now()"
                " WHERE user_id = %s AND revoked_at IS NULL",
                user_id,
                cur=cur,
            )
    return user


async def change_password(db, user, current, new, cost, address, config):
    """The user's own change: the current password first; other sessions end, this one stays."""
    if not isinstance(current, str) or not isinstance(new, str):
        raise UserError(400, "Enter your current and your new password.")
    validate_password(new)
    attempt_id = await record_login_attempt(db, user.username, address, config)
    row = await db.fetch_one("SELECT password_hash FROM core.users WHERE id = %s", user.id)
    if not is_text(current) or not await check_password(current, row.password_hash):
        raise UserError(400, "Your current password is not right.")
    await db.run("DELETE FROM core.login_failures WHERE id = %s", attempt_id)
    new_hash = await hash_password(new, cost)
    async with db.transaction() as cur:
        await db.run(
            "UPDATE core.users SET password_hash = %s, updated_at = now() WHERE id = %s",
            new_hash,
            user.id,
            cur=cur,
        )
        await db.run(
            "UPDATE core.sessions SET revoked_at = now()"
            " WHERE user_id = %s AND revoked_at IS NULL"
            "   AND id <> %s AND parent_id IS DISTINCT FROM %s",
            user.id,
            user.root_session_id,
            user.root_session_id,
            cur=cur,
        )


async def set_password(db, username, new, cost):
    """A sysadmin's reset (CLI): no current password; every session of the user ends."""
    username = check_text(username, "username", 64, required=True)
    validate_password(new)
    new_hash = await hash_password(new, cost)
    async with db.transaction() as cur:
        user = await db.fetch_one(
            "UPDATE core.users SET password_hash = %s, updated_at = now()"
            f" WHERE lower(username) = lower(%s) RETURNING {USER_COLUMNS}",
            new_hash,
            username,
            cur=cur,
            missing=f"there is no user {username!r}",
        )
        await db.run(
            "UPDATE core.sessions SET revoked_at = now() WHERE user_id = %s AND revoked_at IS NULL",
            user.id,
            cur=cur,
        )
    return user


# --- login and throttling --------------------------------------------------------


async def record_login_attempt(db, username, address, config):
    """Count this attempt before checking the password; 429 when over the limits.

    The attempt is stored first and counted after, each in its own statement,
    so N parallel guesses cannot all pass a check made before any of them was
    recorded: the k-th attempt to commit sees at least k. A successful login
    removes only its own row; failures expire with the window.
    Returns the id of the attempt's row.
    """
    attempt = await db.fetch_one(
        "INSERT INTO core.login_failures (username, address) VALUES (%s, %s) RETURNING id",
        username,
        address,
    )
    row = await db.fetch_one(
        "SELECT count(*) FILTER (WHERE lower(username) = lower(%s)) AS by_user,"
        "       count(*) FILTER (WHERE address = %s) AS by_address,"
        "       ceil(extract(epoch FROM min(at) + make_interval(secs => %s) - now()))::int"
        "           AS retry_after"
        "  FROM core.login_failures"
        " WHERE at > now() - make_interval(secs => %s)"
        "   AND (lower(username) = lower(%s) OR address = %s)",
        username,
        address,
        config.throttle_window_s,
        config.throttle_window_s,
        username,
        address,
    )
    if row.by_user > config.throttle_per_user or row.by_address > config.throttle_per_address:
        wait = max(1, row.retry_after or config.throttle_window_s)
        minutes = -(-wait // 60)
        raise UserError(
            429,
            f"Too many failed logins. Try again in {minutes} minute{'s' if minutes != 1 else ''}.",
            headers={"Retry-After": str(wait)},
        )
    return attempt.id


async def authenticate(db, username, password, address, config):
    """The user row for correct, active credentials; 401 (or 429) otherwise."""
    username = (username or "").strip() if isinstance(username, str) else ""
    password = password if isinstance(password, str) else ""
    if not username or not password:
        raise UserError(400, "Enter your username and password.")
    if not is_text(username) or len(username) > 64 or not is_text(password):
        raise UserError(401, "Wrong username or password.")
    attempt_id = await record_login_attempt(db, username, address, config)
    user = await db.fetch_optional(
        "SELECT id, username, role, email, active, password_hash FROM core.users"
        " WHERE lower(username) = lower(%s)",
        username,
    )
    ok = await check_password(
        password, user.password_hash if user else dummy_hash(config.bcrypt_cost)
    )
    if user is None or not ok or not user.active:
        raise UserError(401, "Wrong username or password.")
    await db.run("DELETE FROM core.login_failures WHERE id = %s", attempt_id)
    return user


async def log_in(db, username, password, address, config, kind, ttl_s, host=None):
    """Check the credentials and open a session of `kind`: (user, token), or 401/429.

    Per process, attempts for one username take turns, so a burst of correct
    logins (a script, a double click) is not counted as a burst of failures.
    """
    key = (username or "").strip().lower() if isinstance(username, str) else ""
    entry = _login_locks.setdefault(key, [asyncio.Lock(), 0])  # [lock, users of it]
    entry[1] += 1
    try:
        async with entry[0]:
            user = await authenticate(db, username, password, address, config)
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _login_locks[key]
    token = await sessions.create_session(
        db, user.id, kind, ttl_s, host=host, password_hash=user.password_hash
    )
    if token is None:  # password changed or user deactivated while we checked
        raise UserError(401, "Wrong username or password.")
    return user, token


_login_locks = {}


# --- the first admin, synchronously at start ----------------------------------------

INITIAL_ADMIN_LOCK = 7_200_000_002


def ensure_initial_admin(dsn, cost, data_dir):
    """On an empty users table, create `admin` with a random password.

    Returns the password (to print once) or None when users already exist. The
    password is also written to <data_dir>/initial-admin-password, mode 0600.
    """
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (INITIAL_ADMIN_LOCK,))
            cur.execute("SELECT EXISTS (SELECT 1 FROM core.users)")
            if cur.fetchone()[0]:
                return None
            password = secrets.token_urlsafe(12)
            cur.execute(
                "INSERT INTO core.users (username, password_hash, role)"
                " VALUES ('admin', %s, 'admin')",
                (_hash_sync(password, cost),),
            )
            path = os.path.join(data_dir, "initial-admin-password")
            os.makedirs(data_dir, exist_ok=True)
            if os.path.exists(path):
                os.unlink(path)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            return password
    finally:
        conn.close()
