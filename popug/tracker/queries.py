"""The tracker's rules in SQL: create (with a random assignee), shuffle, complete, list.

Each business action is one statement: a data-modifying CTE changes the task
and writes its ledger entry together, so there is no moment when a task is
assigned without its fee or done without its reward, and no half-written
state after any error.
"""

import random
from decimal import Decimal

from popug.common.db import Prepared
from popug.common.errors import UserError

TITLE_MAX = 200
DESCRIPTION_MAX = 5000
ASSIGN_FEE_RANGE = (Decimal("10.00"), Decimal("20.00"))
REWARD_RANGE = (Decimal("20.00"), Decimal("40.00"))

_rng = random.SystemRandom()


def random_price(low, high):
    """A uniformly random amount in [low, high], to the cent."""
    cents = _rng.randint(int(low * 100), int(high * 100))
    return (Decimal(cents) / 100).quantize(Decimal("0.01"))


NO_ASSIGNEE = (
    "No popug can receive tasks: there is no active user with an assignable role "
    "(worker, accountant). Create one first."
)

TASK_COLUMNS = """t.id, t.title, t.description, t.status, t.assign_fee, t.reward,
       t.created_at, t.assigned_at, t.completed_at, t.assignee_id,
       a.username AS assignee_username"""

# The assignee is picked by the database among active popugs of an
# assignable role; with none, the INSERT inserts nothing and we answer 409.
CREATE_TASK = Prepared(
    "create_task",
    f"""
WITH assignee AS (
    SELECT u.id, u.username, u.email FROM core.users u JOIN core.roles r ON r.name = u.role
     WHERE r.assignable AND u.active
     ORDER BY random() LIMIT 1
), task AS (
    INSERT INTO core.tasks (title, description, assignee_id, assign_fee, reward, created_by)
    SELECT %s, %s, assignee.id, %s, %s, %s FROM assignee
    RETURNING *
), fee AS (
    INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)
    SELECT assignee_id, id, 'fee', -assign_fee, assigned_at FROM task
), note AS (
    INSERT INTO core.outbox (kind, recipient, subject, body)
    SELECT 'task_assigned', a.email, left('New task #' || t.id || ': ' || t.title, 300),
           'Hello ' || a.username || E',\n\nA task was assigned to you:\n\n#' || t.id || ' '
           || t.title || E'\n\n'
           || CASE WHEN t.description <> '' THEN t.description || E'\n\n' ELSE '' END
           || 'Fee charged now: ' || t.assign_fee
           || E'\nReward when you complete it: ' || t.reward
           || E'\n\nYour tasks: ' || %s || E'\n'
      FROM task t JOIN assignee a ON a.id = t.assignee_id
     WHERE a.email <> ''
)
SELECT {TASK_COLUMNS} FROM task t JOIN assignee a ON a.id = t.assignee_id
""",
)


async def create_task(db, title, description, created_by, tracker_url):
    """Create a task for a random popug: its fee in the ledger and an email to them, at once."""
    rows = await db.fetch_all(
        CREATE_TASK,
        title,
        description,
        random_price(*ASSIGN_FEE_RANGE),
        random_price(*REWARD_RANGE),
        created_by,
        tracker_url,
    )
    if not rows:
        raise UserError(409, NO_ASSIGNEE)
    return rows[0]


# One set-based pass: lock every open task, draw a random index into the pool
# of assignable popugs per task (random() is evaluated per row of a
# materialized CTE), update all tasks and write one fee per assignment.
# Tasks completed meanwhile are skipped: the row lock makes READ COMMITTED
# re-check status = 'open' on the locked row.
SHUFFLE_OPEN_TASKS = """
WITH pool AS MATERIALIZED (
    SELECT u.id, (row_number() OVER (ORDER BY u.id) - 1) AS n
      FROM core.users u JOIN core.roles r ON r.name = u.role
     WHERE r.assignable AND u.active
), size AS (
    SELECT count(*) AS cnt FROM pool
), draw AS MATERIALIZED (
    SELECT t.id, t.assignee_id AS old_assignee_id, floor(random() * size.cnt)::bigint AS n
      FROM core.tasks t CROSS JOIN size
     WHERE t.status = 'open' AND size.cnt > 0
     ORDER BY t.id
     FOR UPDATE OF t
), moved AS (
    UPDATE core.tasks t SET assignee_id = pool.id, assigned_at = now()
      FROM draw JOIN pool ON pool.n = draw.n
     WHERE t.id = draw.id
    RETURNING t.id, t.title, t.reward, t.assignee_id, t.assign_fee, draw.old_assignee_id
), fees AS (
    INSERT INTO core.ledger (user_id, task_id, kind, amount)
    SELECT assignee_id, id, 'fee', -assign_fee FROM moved
    RETURNING 1
), digest AS (
    -- One message per popug who got tasks, listing them (the first 50).
    INSERT INTO core.outbox (kind, recipient, subject, body)
    SELECT 'shuffle_digest', u.email,
           'Shuffle: ' || count(*)
           || CASE WHEN count(*) = 1 THEN ' task is' ELSE ' tasks are' END || ' yours now',
           'Hello ' || u.username || E',\n\nA manager shuffled the open tasks. These are '
           || E'assigned to you now; each assignment charged its fee:\n\n'
           || array_to_string((array_agg('#' || m.id || ' ' || m.title || ' (fee '
                                         || m.assign_fee || ', reward ' || m.reward || ')'
                                         ORDER BY m.id))[1:50], E'\n')
           || CASE WHEN count(*) > 50 THEN E'\n... and ' || (count(*) - 50) || ' more'
                   ELSE '' END
           || E'\n\nYour tasks: ' || %s || E'\n'
      FROM moved m JOIN core.users u ON u.id = m.assignee_id
     WHERE u.email <> ''
     GROUP BY u.id, u.email, u.username
)
SELECT (SELECT count(*) FROM fees) AS reassigned,
       (SELECT count(*) FROM moved WHERE assignee_id <> old_assignee_id) AS changed,
       (SELECT cnt FROM size) AS pool_size
"""


# Two shuffles at once would each lock part of the open tasks and wait for
# the other's part (a deadlock PostgreSQL breaks by failing one): take turns.
SHUFFLE_LOCK = 7_200_000_101


async def shuffle_open_tasks(db, tracker_url):
    """Draw a fresh random assignee for every open task.

    Returns (reassigned, changed): how many tasks were drawn for (each charged
    its fee again), and how many of them went to someone other than before.
    """
    async with db.transaction() as cur:
        await db.run("SELECT pg_advisory_xact_lock(%s)", SHUFFLE_LOCK, cur=cur)
        row = await db.fetch_one(SHUFFLE_OPEN_TASKS, tracker_url, cur=cur)
    if row.pool_size == 0:
        raise UserError(409, NO_ASSIGNEE)
    return row.reassigned, row.changed


# The row lock of the UPDATE serialises concurrent completes: the second
# waits, then finds status = 'done' and updates nothing.
COMPLETE_TASK = f"""
WITH done AS (
    UPDATE core.tasks SET status = 'done', completed_at = now()
     WHERE id = %s AND status = 'open' AND assignee_id = %s
    RETURNING *
), reward AS (
    INSERT INTO core.ledger (user_id, task_id, kind, amount, created_at)
    SELECT assignee_id, id, 'reward', reward, completed_at FROM done
)
SELECT {TASK_COLUMNS} FROM done t JOIN core.users a ON a.id = t.assignee_id
"""


async def complete_task(db, task_id, user_id):
    """Mark the task done and credit its reward, if `user_id` is its current assignee."""
    rows = await db.fetch_all(COMPLETE_TASK, task_id, user_id)
    if rows:
        return rows[0]
    task = await get_task(db, task_id)
    if task.status == "done":
        raise UserError(409, f"Task #{task_id} is already completed.")
    if task.assignee_id != user_id:
        was_mine = await db.fetch_optional(
            "SELECT 1 AS yes FROM core.ledger WHERE task_id = %s AND user_id = %s AND kind = 'fee'"
            " LIMIT 1",
            task_id,
            user_id,
        )
        if was_mine:
            raise UserError(
                409,
                f"Task #{task_id} was reassigned to {task.assignee_username} by a shuffle; "
                "only the current assignee can complete it.",
            )
        raise UserError(403, f"Task #{task_id} is not assigned to you.")
    raise UserError(409, f"Task #{task_id} changed while completing it; try again.")


async def get_task(db, task_id):
    return await db.fetch_one(
        f"SELECT {TASK_COLUMNS} FROM core.tasks t JOIN core.users a ON a.id = t.assignee_id"
        " WHERE t.id = %s",
        task_id,
        missing=f"There is no task #{task_id}.",
    )


LIST_TASKS = f"""
SELECT {TASK_COLUMNS} FROM core.tasks t JOIN core.users a ON a.id = t.assignee_id
 WHERE (%s::bigint IS NULL OR t.assignee_id = %s)
   AND (%s::text IS NULL OR t.status = %s)
   AND (%s::bigint IS NULL OR t.id < %s)
 ORDER BY t.id DESC LIMIT %s
"""

# The API's task object (see task_json) built by PostgreSQL: a list of 100
# tasks is then one string from the database instead of 100 rows of Decimals
# and datetimes converted twice in Python. numeric(12,2)::text is "12.34";
# times are formatted exactly as to_json() in Python does: UTC, microseconds.
TASK_JSON_SQL = """json_build_object(
    'id', t.id, 'title', t.title, 'description', t.description, 'status', t.status,
    'assignee', json_build_object('id', t.assignee_id, 'username', t.assignee_username),
    'assign_fee', t.assign_fee::text, 'reward', t.reward::text,
    'created_at', to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
    'completed_at',
        to_char(t.completed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'))"""

LIST_TASKS_JSON = f"""
SELECT coalesce(json_agg({TASK_JSON_SQL} ORDER BY t.id DESC), '[]')::text AS tasks
  FROM ({LIST_TASKS}) t
"""


def _list_params(assignee_id, status, limit, before_id):
    return (assignee_id, assignee_id, status, status, before_id, before_id, limit)


async def list_tasks(db, assignee_id=None, status=None, limit=100, before_id=None):
    """Tasks newest first, filtered; `before_id` pages backwards through them."""
    return await db.fetch_all(LIST_TASKS, *_list_params(assignee_id, status, limit, before_id))


async def list_tasks_json(db, assignee_id=None, status=None, limit=100, before_id=None):
    """The same list as list_tasks, as a JSON array (text) of API task objects."""
    row = await db.fetch_one(LIST_TASKS_JSON, *_list_params(assignee_id, status, limit, before_id))
    return row.tasks


async def list_people(db):
    """Everyone who has or can get tasks, for the assignee filter."""
    return await db.fetch_all(
        "SELECT u.id, u.username, u.active FROM core.users u JOIN core.roles r ON r.name = u.role"
        " WHERE r.assignable OR EXISTS (SELECT 1 FROM core.tasks t WHERE t.assignee_id = u.id)"
        " ORDER BY lower(u.username)"
    )


def task_json(t):
    return {
        "id": t.id,
        "title": t.title,
        "description": t.description,
        "status": t.status,
        "assignee": {"id": t.assignee_id, "username": t.assignee_username},
        "assign_fee": t.assign_fee,
        "reward": t.reward,
        "created_at": t.created_at,
        "completed_at": t.completed_at,
    }
