"""The baseline: a bare Tornado + aiopg app doing one INSERT / one SELECT per request.

No auth, no routing by host, no validation: what the tracker's API would
cost if it did nothing but its one statement. Run by bench_tracker.py.
"""

import asyncio
import json
import sys

import aiopg
import tornado.web

LIST_SQL = """
SELECT t.id, t.title, t.description, t.status, t.assign_fee::text, t.reward::text,
       t.created_at::text, t.completed_at::text, t.assignee_id, a.username
  FROM core.tasks t JOIN core.users a ON a.id = t.assignee_id
 WHERE t.assignee_id = %s AND t.status = 'open' ORDER BY t.id DESC LIMIT 100
"""


class InsertHandler(tornado.web.RequestHandler):
    async def post(self):
        body = json.loads(self.request.body)
        async with self.settings["pool"].acquire() as conn, conn.cursor() as cur:
            await cur.execute(
                "INSERT INTO core.tasks (title, description, assignee_id, assign_fee, reward,"
                " created_by) VALUES (%s, %s, %s, 15.00, 30.00, %s) RETURNING id",
                (
                    body["title"],
                    body.get("description", ""),
                    self.settings["user_id"],
                    self.settings["user_id"],
                ),
            )
            (task_id,) = await cur.fetchone()
        self.set_status(201)
        self.write({"id": task_id})


class SelectHandler(tornado.web.RequestHandler):
    async def get(self):
        async with self.settings["pool"].acquire() as conn, conn.cursor() as cur:
            await cur.execute(LIST_SQL, (self.settings["user_id"],))
            rows = await cur.fetchall()
        names = [
            "id",
            "title",
            "description",
            "status",
            "assign_fee",
            "reward",
            "created_at",
            "completed_at",
            "assignee_id",
            "assignee",
        ]
        self.write({"tasks": [dict(zip(names, r, strict=True)) for r in rows]})


class HealthHandler(tornado.web.RequestHandler):
    def get(self):
        self.write("ok")


async def main(dsn, port, user_id):
    pool = await aiopg.create_pool(dsn, minsize=1, maxsize=10)
    app = tornado.web.Application(
        [(r"/insert", InsertHandler), (r"/select", SelectHandler), (r"/healthz", HealthHandler)],
        pool=pool,
        user_id=user_id,
    )
    app.listen(port, address="127.0.0.1")
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
