"""The notifier's background duty: deliver due outbox rows, every notifier.interval_s."""

import asyncio
import logging

from popug.common.duty import PeriodicDuty
from popug.notifier import queries
from popug.notifier.delivery import AmbiguousDelivery, build_message, make_transport

log = logging.getLogger(__name__)


class Notifier(PeriodicDuty):
    """Claims due messages, delivers each in a worker thread, records the outcome."""

    name = "notifier"
    service = "notifier"

    def __init__(self, config, db, transport=None):
        super().__init__()
        self.config = config
        self.db = db
        self.transport = transport or make_transport(config)
        self.settings = config.notifier
        # A row is held while its delivery may still be running: every SMTP
        # step has its own timeout, a message has a handful of them.
        self.lease_s = int(self.settings.smtp.timeout_s * 6 + 30)

    def interval_s(self):
        return self.settings.interval_s

    async def run_once(self):
        await self.deliver_due()

    async def deliver_due(self):
        """One pass: recover interrupted rows, then deliver what is due. Returns (sent, failed)."""
        recovered = await queries.recover_interrupted(
            self.db, self.transport.resend_interrupted, self.settings.max_attempts
        )
        if recovered:
            log.warning("notifier: %d message(s) were interrupted mid-delivery", recovered)
        sent = failed = 0
        rows = await queries.claim_due(self.db, self.settings.batch, self.lease_s)
        loop = asyncio.get_running_loop()
        for row in rows:
            try:
                msg = build_message(row, self.settings.from_address, self.config.domain)
                await loop.run_in_executor(None, self.transport.send, msg, row)
            except AmbiguousDelivery as e:
                failed += 1
                log.warning("notifier: message %d to %s: %s", row.id, row.recipient, e)
                await queries.mark_failed_for_good(self.db, row.id, str(e))
            except Exception as e:  # any delivery failure is recorded on the row
                failed += 1
                error = f"{type(e).__name__}: {e}"
                log.warning("notifier: message %d to %s: %s", row.id, row.recipient, error)
                await queries.mark_failed_attempt(
                    self.db, row.id, error, self.settings.max_attempts, self.settings.backoff_s
                )
            else:
                sent += 1
                await queries.mark_sent(self.db, row.id)
        return sent, failed
