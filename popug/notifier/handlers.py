"""The notifier's admin pages: what was sent, what is waiting, what failed."""

from popug.common.errors import UserError
from popug.common.web import ApiHandler, PageHandler, api_auth_required, auth_required, has_perm
from popug.notifier import queries

STATES = ("pending", "sending", "sent", "failed")


def parse_state(value):
    if value in (None, "", "all"):
        return None
    if value not in STATES:
        raise UserError(400, f"state must be one of {', '.join(STATES)}; got {value[:20]!r}")
    return value


class OutboxHandler(PageHandler):
    """/ on the notifier host: recent messages and their state."""

    service = "notifier"

    @auth_required
    @has_perm("can_view_operations")
    async def get(self):
        state = parse_state(self.get_argument("state", ""))
        self.render(
            "outbox.html",
            messages=await queries.recent_messages(self.db, state),
            counts=await queries.outbox_counts(self.db),
            state=state or "",
            transport=self.config.notifier.transport,
        )


class OutboxApiHandler(ApiHandler):
    @api_auth_required
    @has_perm("can_view_operations")
    async def get(self):
        state = parse_state(self.get_argument("state", ""))
        messages = await queries.recent_messages(self.db, state)
        self.write_json({"counts": await queries.outbox_counts(self.db), "messages": messages})
