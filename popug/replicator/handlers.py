"""The replicator's admin status page and API."""

from popug.common.web import ApiHandler, PageHandler, api_auth_required, auth_required, has_perm
from popug.replicator.service import replica_statuses


class StatusHandler(PageHandler):
    service = "replicator"

    @auth_required
    @has_perm("can_view_operations")
    async def get(self):
        self.render(
            "status.html",
            replicas=await replica_statuses(self.db, self.config),
            interval=self.config.replication.interval_s,
        )


class StatusApiHandler(ApiHandler):
    @api_auth_required
    @has_perm("can_view_operations")
    async def get(self):
        self.write_json({"replicas": await replica_statuses(self.db, self.config)})
