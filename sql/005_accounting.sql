-- 005_accounting: end-of-day payouts, exactly once, and who may see accounts.
--
-- A payout names the business day it closes (ledger.day); the partial unique
-- index allows one payout per popug per day, whatever number of processes
-- run the close at once or however often it is repeated. created_at stays
-- the real time it was written, so the audit log never shows a made-up time.
--
-- closed_days records each closed business day (its UTC range, how many
-- popugs were paid and how much): the close of a day is one transaction that
-- writes the payouts, their emails and this row together, and the days after
-- an outage are closed in order from the last row here.

ALTER TABLE core.ledger ADD COLUMN day date;
ALTER TABLE core.ledger ADD CONSTRAINT ledger_payout_has_day CHECK ((kind = 'payout') = (day IS NOT NULL));
CREATE UNIQUE INDEX ledger_one_payout_per_day ON core.ledger (user_id, day) WHERE kind = 'payout';

CREATE TABLE core.closed_days (
    day          date PRIMARY KEY,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    closed_at    timestamptz NOT NULL DEFAULT now(),
    early        boolean NOT NULL,       -- closed before its cut-off (bin/popug close-day)
    popugs_paid  integer NOT NULL,
    total_paid   numeric(12,2) NOT NULL,
    closed_by    text NOT NULL,          -- "accounting service" or "popug close-day"
    CHECK (starts_at < ends_at)
);

INSERT INTO core.permissions (name, description) VALUES
    ('can_view_accounts', 'See every popug''s account and the management earnings');
INSERT INTO core.role_permissions (role, permission) VALUES
    ('admin', 'can_view_accounts'),
    ('accountant', 'can_view_accounts');
