-- 004_replication: what the replicator needs on the master.
--
-- rv: the id (xid8) of the transaction that last wrote the row, set on insert
-- by the default and on update by a trigger. A replica remembers the master
-- snapshot it copied; the next cycle copies exactly the rows whose rv that
-- snapshot did not see (pg_visible_in_snapshot), so a transaction that was
-- still running during a copy is picked up by the next one, whatever id it
-- had. The index on rv finds them without a scan: every xid below the old
-- snapshot's xmin was settled before it.
--
-- replica_status: per replica, what the status page and the alerts need.

CREATE FUNCTION core.stamp_row_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.rv := pg_current_xact_id();
    RETURN NEW;
END
$$;

ALTER TABLE core.users  ADD COLUMN rv xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE core.tasks  ADD COLUMN rv xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE core.ledger ADD COLUMN rv xid8 NOT NULL DEFAULT pg_current_xact_id();

CREATE TRIGGER users_rv  BEFORE UPDATE ON core.users  FOR EACH ROW EXECUTE FUNCTION core.stamp_row_version();
CREATE TRIGGER tasks_rv  BEFORE UPDATE ON core.tasks  FOR EACH ROW EXECUTE FUNCTION core.stamp_row_version();
CREATE TRIGGER ledger_rv BEFORE UPDATE ON core.ledger FOR EACH ROW EXECUTE FUNCTION core.stamp_row_version();

CREATE INDEX users_rv_idx  ON core.users (rv);
CREATE INDEX tasks_rv_idx  ON core.tasks (rv);
CREATE INDEX ledger_rv_idx ON core.ledger (rv);

CREATE TABLE core.replica_status (
    name            text PRIMARY KEY,
    version         bigint NOT NULL DEFAULT 0,
    snapshot_at     timestamptz,          -- when the master snapshot it holds was taken
    last_success_at timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    -- An incident is open from the first failure to the next success: one
    -- alert when it opens, one recovery notice when it closes.
    incident_since  timestamptz,
    tables          jsonb NOT NULL DEFAULT '{}'
);
