"""A background duty: one coroutine run every N seconds on the IOLoop, never two at once."""

import asyncio
import datetime
import logging

import tornado.ioloop

log = logging.getLogger(__name__)


class PeriodicDuty:
    """Subclasses set `name` and implement `run_once()` and `interval_s()`;
    run_once() may return a text that says what is wrong (the pass ran, but
    its work failed), which /healthz and /metrics then report.

    A pass that is still running when the next tick comes is not doubled; a
    failing pass is logged and the next tick tries again; stop() lets the
    pass under way finish (bounded) so a SIGTERM never cuts one in half.
    """

    name = "duty"
    service = None  # the service whose /healthz reports this duty
    stop_timeout_s = 30
    run_at_start = False  # True: the first pass runs at start, not one interval later

    def __init__(self):
        self._callback = None
        self._running = None
        self.last_error = None  # why the latest pass failed; None after a good one
        self.failing_since = None

    def health(self):
        """None when fine, else why not (for /healthz and /metrics)."""
        if self.last_error is None:
            return None
        return f"{self.name}: failing since {self.failing_since:%H:%M:%S}: {self.last_error}"

    def interval_s(self):
        raise NotImplementedError

    async def run_once(self):
        raise NotImplementedError

    def start(self):
        self._callback = tornado.ioloop.PeriodicCallback(self._tick, self.interval_s() * 1000)
        self._callback.start()
        if self.run_at_start:
            self._tick()
        log.info("%s: running every %ss", self.name, self.interval_s())

    async def stop(self):
        if self._callback:
            self._callback.stop()
        if self._running and not self._running.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._running), self.stop_timeout_s)
            except TimeoutError:
                log.warning("%s: a pass still running after %ss", self.name, self.stop_timeout_s)

    def _tick(self):
        if self._running and not self._running.done():
            return  # the previous pass is still going
        self._running = asyncio.ensure_future(self._safe_pass())

    async def _safe_pass(self):
        try:
            outcome = await self.run_once()
        except Exception as e:  # the next tick tries again; say why this one failed
            log.exception("%s: pass failed", self.name)
            self.record_failure(f"{type(e).__name__}: {e}"[:300])
            return
        if isinstance(outcome, str):  # a pass that ran but found a problem it reports
            self.record_failure(outcome)
        else:
            self.last_error = self.failing_since = None

    def record_failure(self, error):
        if self.last_error is None:
            self.failing_since = datetime.datetime.now(datetime.UTC)
        self.last_error = error
