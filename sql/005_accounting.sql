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
-- an outage are closed in order from the last row here. It is replicated, so
-- a replica shows a day closed in the same snapshot as that day's payouts.

ALTER TABLE core.ledger ADD COLUMN day date;
ALTER TABLE core.ledger ADD CONSTRAINT ledger_payout_has_day CHECK ((kind = 'payout') = (day IS NOT NULL));
CREATE UNIQUE INDEX ledger_one_payout_per_day ON core.ledger (user_id, day) WHERE kind = 'payout';

CREATE TABLE core.closed_days (
    id           bigserial PRIMARY KEY,   -- replicated like users, tasks and ledger
    day          date NOT NULL UNIQUE,
    starts_at    timestamptz NOT NULL,
    ends_at      timestamptz NOT NULL,
    closed_at    timestamptz NOT NULL DEFAULT now(),
    early        boolean NOT NULL,       -- closed before its cut-off (bin/popug close-day)
    popugs_paid  integer NOT NULL,
    total_paid   numeric(12,2) NOT NULL,
    closed_by    text NOT NULL,          -- "accounting service" or "popug close-day"
    -- Equal for a day a zone skipped (Pacific/Apia, 2011-12-30): closed, empty.
    CHECK (starts_at <= ends_at),
    rv           xid8 NOT NULL DEFAULT pg_current_xact_id()  -- see 004_replication
);
CREATE TRIGGER closed_days_rv BEFORE UPDATE ON core.closed_days
    FOR EACH ROW EXECUTE FUNCTION core.stamp_row_version();
CREATE INDEX closed_days_rv_idx ON core.closed_days (rv);

INSERT INTO core.permissions (name, description) VALUES
    ('can_view_accounts', 'See every popug''s account and the management earnings');
INSERT INTO core.role_permissions (role, permission) VALUES
    ('admin', 'can_view_accounts'),
    ('accountant', 'can_view_accounts');
