"""/metrics in the Prometheus text format (prometheus-client), one registry per process.

Requests are counted and timed as they finish (by handler class and status);
the figures that live in the database — pool use, replication lag, the
outbox, the last closed day — are read when Prometheus scrapes, so they are
never stale and cost nothing between scrapes.
"""

import logging

import prometheus_client as prom

log = logging.getLogger(__name__)

REGISTRY = prom.CollectorRegistry()
REQUESTS = prom.Counter(
    "popug_requests",
    "HTTP requests answered, by service, handler and status",
    ["service", "handler", "method", "status"],
    registry=REGISTRY,
)
LATENCY = prom.Histogram(
    "popug_request_duration_seconds",
    "Time to answer an HTTP request, by service and handler",
    ["service", "handler"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
POOL_IN_USE = prom.Gauge(
    "popug_db_pool_connections_in_use", "Database connections handed out", registry=REGISTRY
)
POOL_SIZE = prom.Gauge(
    "popug_db_pool_connections", "Database connections open in the pool", registry=REGISTRY
)
POOL_MAX = prom.Gauge(
    "popug_db_pool_max", "The pool's limit (database.pool_max)", registry=REGISTRY
)
DB_UP = prom.Gauge("popug_db_up", "1 when the database answered this scrape", registry=REGISTRY)
REPLICATION_LAG = prom.Gauge(
    "popug_replication_lag_seconds",
    "Age of the master snapshot a replica holds",
    ["replica"],
    registry=REGISTRY,
)
REPLICATION_FAILING = prom.Gauge(
    "popug_replication_failing", "1 while a replica's cycles fail", ["replica"], registry=REGISTRY
)
OUTBOX = prom.Gauge(
    "popug_outbox_messages", "Messages in the outbox, by state", ["state"], registry=REGISTRY
)
LAST_DAY_CLOSED = prom.Gauge(
    "popug_last_business_day_closed_timestamp_seconds",
    "The end (cut-off) of the latest closed business day, as a Unix time",
    registry=REGISTRY,
)
DUTY_OK = prom.Gauge(
    "popug_duty_healthy",
    "1 when this process's background duty is fine",
    ["duty"],
    registry=REGISTRY,
)


_children = {}  # (service, handler, method, status) -> (counter, histogram) children


def observe_request(handler):
    """Count and time one answered request (called from the access log hook)."""
    key = (
        getattr(handler, "service", "common"),
        type(handler).__name__,
        handler.request.method,
        handler.get_status(),
    )
    children = _children.get(key)
    if children is None:
        # labels() looks its child up by value each time: keep what it returns.
        children = (REQUESTS.labels(*key[:3], str(key[3])), LATENCY.labels(*key[:2]))
        _children[key] = children
    children[0].inc()
    children[1].observe(handler.request.request_time())


SNAPSHOT = """
SELECT (SELECT json_object_agg(state, n) FROM (
            SELECT state, count(*) AS n FROM core.outbox GROUP BY state) o) AS outbox,
       (SELECT json_agg(json_build_object(
            'name', name, 'lag', extract(epoch FROM now() - snapshot_at),
            'failing', incident_since IS NOT NULL)) FROM core.replica_status) AS replicas,
       (SELECT extract(epoch FROM max(ends_at)) FROM core.closed_days) AS last_closed
"""


async def render(db, config, duties):
    """The text Prometheus scrapes: request metrics plus the figures read now."""
    pool = db.pool
    POOL_SIZE.set(pool.size)
    POOL_IN_USE.set(pool.size - pool.freesize)
    POOL_MAX.set(pool.maxsize)
    for duty in duties:
        DUTY_OK.labels(duty.name).set(0 if duty.health() else 1)
    try:
        row = await db.fetch_one(SNAPSHOT)
    except Exception as e:  # the scrape still answers: popug_db_up says what happened
        log.warning("metrics: cannot read the database: %s", e)
        DB_UP.set(0)
    else:
        DB_UP.set(1)
        outbox = row.outbox or {}
        for state in ("pending", "sending", "sent", "failed"):
            OUTBOX.labels(state).set(outbox.get(state, 0))
        known = {r["name"]: r for r in row.replicas or []}
        for name in config.replication.replicas:
            r = known.get(name)
            if r is not None and r["lag"] is not None:
                REPLICATION_LAG.labels(name).set(r["lag"])
            REPLICATION_FAILING.labels(name).set(1 if r and r["failing"] else 0)
        if row.last_closed is not None:
            LAST_DAY_CLOSED.set(float(row.last_closed))
    return prom.generate_latest(REGISTRY)
