-- 003_outbox: the notification outbox, and who may see operations pages.
--
-- Whoever needs a message sent inserts a row here in the same transaction as
-- the change it reports (a task assigned, a shuffle, a payout, a replication
-- incident), so a message exists exactly when its change committed. The
-- notifier (service 6) delivers pending rows, retries with backoff, and
-- marks a row failed after its last attempt; rows are kept as the record.

CREATE TABLE core.outbox (
    id              bigserial PRIMARY KEY,
    kind            text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]{0,63}$'),
    recipient       text NOT NULL CHECK (recipient LIKE '%_@_%' AND length(recipient) <= 254),
    subject         text NOT NULL CHECK (length(subject) <= 300),
    body            text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- pending -> sending -> sent | pending (retry) | failed
    state           text NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- While 'sending': a notifier holds the row until then. A row still
    -- 'sending' after it was interrupted mid-send (process killed).
    locked_until    timestamptz,
    sent_at         timestamptz,
    last_error      text,
    CHECK ((state = 'sent') = (sent_at IS NOT NULL))
);
CREATE INDEX outbox_due_idx ON core.outbox (next_attempt_at, id) WHERE state = 'pending';
CREATE INDEX outbox_sending_idx ON core.outbox (locked_until) WHERE state = 'sending';

INSERT INTO core.permissions (name, description) VALUES
    ('can_view_operations', 'See the notifier outbox and the replicator status');
INSERT INTO core.role_permissions (role, permission) VALUES
    ('admin', 'can_view_operations');
