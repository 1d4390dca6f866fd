"""The tracker's pages and API. Thin: parse, call one function in queries, render."""

from popug.common.errors import UserError
from popug.common.web import (
    ApiHandler,
    PageHandler,
    api_auth_required,
    auth_required,
    check_text,
    has_perm,
    parse_id,
)
from popug.tracker import queries as q

STATUSES = ("open", "done")
PAGE_SIZE = 100


def parse_task_input(title, description):
    title = check_text(title, "title", q.TITLE_MAX, required=True)
    description = check_text(description, "description", q.DESCRIPTION_MAX)
    return title, description


def parse_filters(handler, status, assignee):
    """status open|done|'' and assignee me|<id>|'' -> (status, assignee_id)."""
    if status in (None, "", "all"):
        status = None
    elif status not in STATUSES:
        raise UserError(400, f"status must be one of open, done; got {status!r}")
    if assignee in (None, "", "all"):
        assignee_id = None
    elif assignee == "me":
        assignee_id = handler.current_user.id
    else:
        assignee_id = parse_id(assignee, "assignee")
    if assignee_id != handler.current_user.id:
        # Seeing other popugs' tasks is a permission; one's own never is.
        handler.require_perm("can_view_all_tasks")
    return status, assignee_id


class TrackerPage(PageHandler):
    service = "tracker"


class HomeHandler(TrackerPage):
    """/ — my open tasks, with a complete button each."""

    @auth_required
    async def get(self):
        if not self.current_user.assignable and self.can("can_view_all_tasks"):
            # Managers and admins never hold tasks: their start page is all of them.
            self.redirect(self.reverse_url("tracker.tasks"))
            return
        tasks = await q.list_tasks(
            self.db, assignee_id=self.current_user.id, status="open", limit=500
        )
        self.render("home.html", tasks=tasks)


class TasksHandler(TrackerPage):
    """/tasks — every task, filtered by status and assignee (managers and admins)."""

    @auth_required
    async def get(self):
        status, assignee_id = parse_filters(
            self, self.get_argument("status", "open"), self.get_argument("assignee", "")
        )
        before = self.get_argument("before", "")
        before_id = parse_id(before, "before") if before else None
        tasks = await q.list_tasks(self.db, assignee_id, status, PAGE_SIZE + 1, before_id)
        mine = assignee_id == self.current_user.id
        if mine and status == "done":
            page, heading = "done", "My completed tasks"
        elif mine:
            page, heading = "mine", "My tasks"
        else:
            page, heading = "all", "All tasks"
        self.render(
            "tasks.html",
            page=page,
            heading=heading,
            tasks=tasks[:PAGE_SIZE],
            more=len(tasks) > PAGE_SIZE,
            people=await q.list_people(self.db) if self.can("can_view_all_tasks") else [],
            status=status or "",
            assignee_id=assignee_id,
        )

    @auth_required
    @has_perm("can_add_task")
    async def post(self):
        title = self.get_argument("title", "")
        # Browsers send a textarea's line breaks as CRLF (HTML spec); store them as typed.
        description = self.get_argument("description", "").replace("\r\n", "\n")
        try:
            title, description = parse_task_input(title, description)
            task = await q.create_task(
                self.db, title, description, self.current_user.id, self.service_url("tracker")
            )
        except UserError as e:
            self.set_error_status(e)
            self.render("new.html", error=e.message, title=title, description=description)
            return
        self.flash(f"Created task #{task.id}, assigned to {task.assignee_username}.")
        self.redirect(self.reverse_url("tracker.tasks") + f"?status=open#task-{task.id}")


class TaskNewHandler(TrackerPage):
    """/tasks/new — the create form."""

    @auth_required
    @has_perm("can_add_task")
    async def get(self):
        self.render("new.html", error=None, title="", description="")


class TaskCompleteHandler(TrackerPage):
    """POST /tasks/{id}/complete — from the complete button."""

    @auth_required
    async def post(self, task_id):
        task_id = parse_id(task_id, "task id")
        try:
            task = await q.complete_task(self.db, task_id, self.current_user.id)
        except UserError as e:
            if e.status == 404:
                raise
            self.flash(e.message, error=True)
        else:
            self.flash(f"Done: #{task.id} {task.title[:80]} — {task.reward} credited.")
        self.redirect(self.reverse_url("tracker.home"))


class TaskShuffleHandler(TrackerPage):
    """POST /tasks/shuffle — every open task gets a new random assignee."""

    @auth_required
    @has_perm("can_shuffle_tasks")
    async def post(self):
        try:
            n, changed = await q.shuffle_open_tasks(self.db, self.service_url("tracker"))
        except UserError as e:
            self.flash(e.message, error=True)
        else:
            self.flash(
                f"Shuffled: {n} open task{'s' if n != 1 else ''} reassigned, "
                f"{changed} to a different popug (each assignment charges its fee)."
            )
        self.redirect(self.reverse_url("tracker.tasks"))


# --- API ---------------------------------------------------------------------------


class TasksApiHandler(ApiHandler):
    @api_auth_required
    async def get(self):
        status, assignee_id = parse_filters(
            self,
            self.get_argument("status", ""),
            self.get_argument("assignee", None) or ("" if self.can("can_view_all_tasks") else "me"),
        )
        limit = self.get_argument("limit", "100")
        limit = parse_id(limit, "limit")
        if limit > 1000:
            raise UserError(400, "limit is at most 1000")
        before = self.get_argument("before", "")
        before_id = parse_id(before, "before") if before else None
        tasks = await q.list_tasks_json(self.db, assignee_id, status, limit, before_id)
        self.write_raw_json('{"tasks": ' + tasks + "}")

    @api_auth_required
    @has_perm("can_add_task")
    async def post(self):
        body = self.json_body()
        unknown = sorted(set(body) - {"title", "description"})
        if unknown:
            raise UserError(400, f"unknown field {unknown[0]!r}: send title and description")
        if "title" not in body:
            raise UserError(400, "title is required")
        title, description = parse_task_input(body.get("title"), body.get("description"))
        task = await q.create_task(
            self.db, title, description, self.current_user.id, self.service_url("tracker")
        )
        self.write_json(q.task_json(task), status=201)


class TaskApiHandler(ApiHandler):
    @api_auth_required
    async def get(self, task_id):
        task = await q.get_task(self.db, parse_id(task_id, "task id"))
        if task.assignee_id != self.current_user.id:
            self.require_perm("can_view_all_tasks")
        self.write_json(q.task_json(task))


class TaskCompleteApiHandler(ApiHandler):
    @api_auth_required
    async def post(self, task_id):
        task = await q.complete_task(self.db, parse_id(task_id, "task id"), self.current_user.id)
        self.write_json(q.task_json(task))


class TaskShuffleApiHandler(ApiHandler):
    @api_auth_required
    @has_perm("can_shuffle_tasks")
    async def post(self):
        reassigned, changed = await q.shuffle_open_tasks(self.db, self.service_url("tracker"))
        self.write_json({"reassigned": reassigned, "changed_assignee": changed})
