"""Sessions, bearer tokens and SSO codes: the credentials every service checks.

Only SHA-256 hashes of tokens and codes are stored, so a copy of the
database does not let anyone log in.
"""

import hashlib
import secrets

from popug.common.db import Prepared
from popug.common.errors import UserError

SESSION_COOKIE = "popug_session"


def new_token():
    return secrets.token_urlsafe(32)


def hash_token(token):
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


# The user behind a live credential, with the permissions of their role. A
# service session is live only while the login session it came from is.
# Every request runs it, so it is prepared: planning cost more than running it.
LOAD_SESSION_USER = Prepared(
    "load_session_user",
    """
SELECT s.id AS session_id, coalesce(s.parent_id, s.id) AS root_session_id, s.kind,
       u.id, u.username, u.role, u.email, r.assignable,
       ARRAY(SELECT rp.permission FROM core.role_permissions rp WHERE rp.role = u.role)
           AS permissions
  FROM core.sessions s
  JOIN core.users u ON u.id = s.user_id
  JOIN core.roles r ON r.name = u.role
  LEFT JOIN core.sessions p ON p.id = s.parent_id
 WHERE s.token_hash = %s
   AND s.revoked_at IS NULL AND s.expires_at > now()
   AND (s.parent_id IS NULL OR (p.revoked_at IS NULL AND p.expires_at > now()))
   AND u.active
   -- A cookie session is good only on the host it was made for; a bearer
   -- token only as a bearer token.
   AND CASE WHEN %s THEN s.kind = 'api' ELSE s.kind <> 'api' AND s.host = %s END
""",
)


async def load_session_user(db, token, host, bearer=False):
    """The user (Row, with .permissions as a frozenset) for a token on `host`, or None."""
    if not token or len(token) > 200:
        return None
    row = await db.fetch_optional(LOAD_SESSION_USER, hash_token(token), bearer, host)
    if row is not None:
        row["permissions"] = frozenset(row.permissions)
    return row


async def create_session(
    db, user_id, kind, ttl_s, parent_id=None, host=None, cur=None, password_hash=None
):
    """Store a new session and return its token (shown once, never stored).

    The user must be active, and with `password_hash` still have that hash:
    a login whose bcrypt check ran while the password was changed or the
    user deactivated gets no session (None), instead of one nobody revoked.
    """
    token = new_token()
    n = await db.run(
        "INSERT INTO core.sessions (token_hash, user_id, kind, parent_id, host, expires_at)"
        " SELECT %s, u.id, %s, %s, %s, now() + make_interval(secs => %s)"
        "   FROM core.users u"
        "  WHERE u.id = %s AND u.active AND (%s::text IS NULL OR u.password_hash = %s)",
        hash_token(token),
        kind,
        parent_id,
        host,
        ttl_s,
        user_id,
        password_hash,
        password_hash,
        cur=cur,
    )
    return token if n == 1 else None


async def revoke_session_family(db, root_session_id):
    """End a login session and every service session exchanged from it: logout everywhere."""
    return await db.run(
        "UPDATE core.sessions SET revoked_at = now()"
        " WHERE (id = %s OR parent_id = %s) AND revoked_at IS NULL",
        root_session_id,
        root_session_id,
    )


async def issue_sso_code(db, login_session_id, host, ttl_s):
    """A single-use code that `host` can exchange for a session of its own."""
    code = new_token()
    await db.run(
        "INSERT INTO core.sso_codes (code_hash, session_id, host, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
        hash_token(code),
        login_session_id,
        host,
        ttl_s,
    )
    return code


async def exchange_sso_code(db, code, host, ttl_s):
    """Trade a code for a service session token on `host`; 400 when it is not valid here."""
    if not code or len(code) > 200:
        raise UserError(400, "This sign-in link is incomplete. Please log in again.")
    async with db.transaction() as cur:
        # Single use: the UPDATE takes the row lock, so of two concurrent
        # exchanges of one code only the first finds used_at still NULL.
        row = await db.fetch_optional(
            "UPDATE core.sso_codes c SET used_at = now()"
            "  FROM core.sessions s"
            " WHERE c.code_hash = %s AND c.host = %s AND c.used_at IS NULL"
            "   AND c.expires_at > now() AND s.id = c.session_id"
            "   AND s.revoked_at IS NULL AND s.expires_at > now()"
            " RETURNING s.id AS session_id, s.user_id",
            hash_token(code),
            host,
            cur=cur,
        )
        if row is None:
            raise UserError(
                400, "This sign-in link has expired or was already used. Please log in again."
            )
        token = await create_session(
            db, row.user_id, "service", ttl_s, parent_id=row.session_id, host=host, cur=cur
        )
        if token is None:
            raise UserError(400, "This account is not active. Please log in again.")
        return token
