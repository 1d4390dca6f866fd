"""Auth's pages and API: login, SSO codes for the other services, users admin, tokens."""

import urllib.parse

from popug.auth import queries
from popug.common import sessions
from popug.common.errors import UserError
from popug.common.web import (
    DEFAULT_PORTS,
    ApiHandler,
    PageHandler,
    api_auth_required,
    auth_required,
    has_control_chars,
    has_perm,
    parse_id,
    safe_local_path,
)


def user_json(u):
    return {
        "id": u.id,
        "username": u.username,
        "role": u.role,
        "email": u.email,
        "active": u.active if "active" in u else True,
    }


class AuthPage(PageHandler):
    service = "auth"

    def check_next(self, next_url):
        """The return address as (service, local path), None when absent; 400 unless it is ours.

        No open redirect, and no SSO code for anyone else: the address must be
        one of the configured hosts, with this request's scheme and port, no
        userinfo and no backslash (browsers read "\\" as "/", Python does not).
        The redirect is then rebuilt from the configured host, never echoed.
        """
        if not next_url:
            return None
        refuse = UserError(
            400,
            f"Refusing to send you to {next_url[:200]!r}: it is not one of UberPopug's services.",
        )
        if len(next_url) > 2000 or "\\" in next_url or has_control_chars(next_url):
            raise refuse
        try:
            parts = urllib.parse.urlsplit(next_url)
            port = parts.port
        except ValueError:
            raise refuse from None
        service = self.service_of_host((parts.hostname or "").lower())
        if (
            parts.scheme != self.request.protocol
            or "@" in parts.netloc
            or service is None
            or (port or DEFAULT_PORTS[parts.scheme]) != self.request_port()
        ):
            raise refuse
        path = parts.path or "/"
        if not path.startswith("/") or path.startswith("//"):
            raise refuse
        return service, path + ("?" + parts.query if parts.query else "")

    async def redirect_after_login(self, target):
        if target is None:
            self.redirect("/")
            return
        service, path = target
        if service == "auth":
            self.redirect(safe_local_path(path))
            return
        host = self.config.hosts[service]
        code = await sessions.issue_sso_code(
            self.db, self.current_user.session_id, host, self.config.auth.code_ttl_s
        )
        query = urllib.parse.urlencode({"code": code, "next": path})
        self.redirect(self.service_url(service, "/sso/callback?" + query))


class LoginHandler(AuthPage):
    """/login?next=URL: the one login page; already logged in -> straight back with a code."""

    async def get(self):
        next_url = self.get_argument("next", "")
        try:
            parts = self.check_next(next_url)
        except UserError as e:
            self.set_error_status(e)
            self.render("login.html", error=e.message, next_url="", username="")
            return
        if self.current_user is not None and self.current_user.kind == "login":
            await self.redirect_after_login(parts)
            return
        message = "You are logged out." if self.get_argument("logged_out", None) else None
        self.render("login.html", error=None, next_url=next_url, username="", message=message)

    async def post(self):
        next_url = self.get_argument("next", "")
        username = self.get_argument("username", "")
        try:
            parts = self.check_next(next_url)
        except UserError as e:
            self.set_error_status(e)
            self.render("login.html", error=e.message, next_url="", username=username[:64])
            return
        try:
            _, token = await queries.log_in(
                self.db,
                username,
                self.get_argument("password", ""),
                self.request.remote_ip,
                self.config.auth,
                "login",
                int(self.config.auth.session_hours * 3600),
                host=self.config.hosts["auth"],
            )
        except UserError as e:
            self.set_error_status(e)
            self.render("login.html", error=e.message, next_url=next_url, username=username[:64])
            return
        self.set_signed_cookie(
            sessions.SESSION_COOKIE,
            token,
            expires_days=None,
            httponly=True,
            samesite="Lax",
            secure=self.request.protocol == "https",
        )
        self.current_user = await sessions.load_session_user(
            self.db, token, self.config.hosts["auth"]
        )
        await self.redirect_after_login(parts)

    def render(self, template_name, **kwargs):
        kwargs.setdefault("message", None)
        try:
            kwargs["next_host"] = urllib.parse.urlsplit(kwargs.get("next_url") or "").hostname
        except ValueError:
            kwargs["next_host"] = None
        return super().render(template_name, **kwargs)


class HomeHandler(AuthPage):
    """/ on auth: who you are and where to go."""

    @auth_required
    async def get(self):
        self.render("home.html")


class PasswordHandler(AuthPage):
    """/password: change one's own password."""

    @auth_required
    async def get(self):
        self.render("password.html", error=None)

    @auth_required
    async def post(self):
        new = self.get_argument("new_password", "")
        if new != self.get_argument("new_password_again", ""):
            self.set_status(400)
            self.render("password.html", error="The two new passwords are not the same.")
            return
        try:
            await queries.change_password(
                self.db,
                self.current_user,
                self.get_argument("current_password", ""),
                new,
                self.config.auth.bcrypt_cost,
                self.request.remote_ip,
                self.config.auth,
            )
        except UserError as e:
            self.set_error_status(e)
            self.render("password.html", error=e.message)
            return
        self.flash("Password changed. Your other sessions were logged out.")
        self.redirect(self.reverse_url("auth.home"))


class UsersHandler(AuthPage):
    """/users: everyone, with create form; admins only."""

    @auth_required
    @has_perm("can_manage_users")
    async def get(self):
        await self.show()

    async def show(self, error=None, form=None, status=200):
        self.set_status(status)
        self.render(
            "users.html",
            users=await queries.list_users(self.db),
            roles=await queries.list_roles(self.db),
            error=error,
            form=form or {},
        )

    @auth_required
    @has_perm("can_manage_users")
    async def post(self):
        form = {k: self.get_argument(k, "") for k in ("username", "role", "email")}
        try:
            user = await queries.create_user(
                self.db,
                form["username"],
                self.get_argument("password", ""),
                form["role"],
                form["email"],
                self.config.auth.bcrypt_cost,
            )
        except UserError as e:
            await self.show(error=e.message, form=form, status=e.status)
            return
        self.flash(f"Created {user.username} ({user.role}).")
        self.redirect(self.reverse_url("auth.users"))


class UserHandler(AuthPage):
    """POST /users/{id}: change role or (de)activate."""

    @auth_required
    @has_perm("can_manage_users")
    async def post(self, user_id):
        user_id = parse_id(user_id, "user id")
        role = self.get_argument("role", None) or None
        active = self.get_argument("active", None)
        if active not in (None, "true", "false"):
            raise UserError(400, f"active must be true or false, got {active[:20]!r}")
        active = None if active is None else active == "true"
        try:
            user = await queries.update_user(self.db, self.current_user, user_id, role, active)
        except UserError as e:
            if e.status == 404:
                raise
            self.flash(e.message, error=True)
        else:
            if active is False:
                self.flash(f"{user.username} is deactivated and logged out everywhere.")
            elif active is True:
                self.flash(f"{user.username} is active again.")
            else:
                self.flash(f"{user.username} is now {user.role}.")
        self.redirect(self.reverse_url("auth.users") + f"#user-{user_id}")


# --- API ---------------------------------------------------------------------------


class TokensApiHandler(ApiHandler):
    """POST /api/v1/tokens {username, password} -> 201 {token}."""

    def check_xsrf_cookie(self):
        # Credentials in the body, no cookie used: nothing to forge.
        pass

    async def post(self):
        body = self.json_body()
        ttl = int(self.config.auth.token_days * 86400)
        user, token = await queries.log_in(
            self.db,
            body.get("username"),
            body.get("password"),
            self.request.remote_ip,
            self.config.auth,
            "api",
            ttl,
        )
        self.write_json(
            {"token": token, "token_type": "Bearer", "expires_in": ttl, "user": user_json(user)},
            status=201,
        )


class MeApiHandler(ApiHandler):
    @api_auth_required
    async def get(self):
        u = self.current_user
        self.write_json(
            {
                "id": u.id,
                "username": u.username,
                "role": u.role,
                "email": u.email,
                "permissions": u.permissions,
            }
        )


class UsersApiHandler(ApiHandler):
    @api_auth_required
    @has_perm("can_manage_users")
    async def get(self):
        self.write_json({"users": [user_json(u) for u in await queries.list_users(self.db)]})

    @api_auth_required
    @has_perm("can_manage_users")
    async def post(self):
        body = self.json_body()
        user = await queries.create_user(
            self.db,
            body.get("username"),
            body.get("password"),
            body.get("role"),
            body.get("email"),
            self.config.auth.bcrypt_cost,
        )
        self.write_json(user_json(user), status=201)


class UserApiHandler(ApiHandler):
    @api_auth_required
    @has_perm("can_manage_users")
    async def get(self, user_id):
        self.write_json(user_json(await queries.get_user(self.db, parse_id(user_id, "user id"))))

    @api_auth_required
    @has_perm("can_manage_users")
    async def patch(self, user_id):
        user_id = parse_id(user_id, "user id")
        body = self.json_body()
        unknown = sorted(set(body) - {"role", "active"})
        if unknown:
            raise UserError(400, f"unknown field {unknown[0]!r}: only role and active can change")
        user = await queries.update_user(
            self.db, self.current_user, user_id, body.get("role"), body.get("active")
        )
        self.write_json(user_json(user))
