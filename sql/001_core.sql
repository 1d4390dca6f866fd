-- 001_core: the master schema `core` — users, roles and permissions, auth
-- sessions and single-use SSO codes, login attempts (for throttling), tasks and
-- the ledger. Every write of every service lands here; replicas are filled
-- from it by the replicator. No hard deletes on replicated tables: users are
-- deactivated, tasks are closed.

CREATE SCHEMA core;

CREATE TABLE core.roles (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,31}$'),
    title       text NOT NULL,
    -- Can receive tasks. Admins and managers hand tasks out; they do not get them.
    assignable  boolean NOT NULL DEFAULT false
);

CREATE TABLE core.permissions (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,63}$'),
    description text NOT NULL
);

CREATE TABLE core.role_permissions (
    role        text NOT NULL REFERENCES core.roles (name) ON UPDATE CASCADE,
    permission  text NOT NULL REFERENCES core.permissions (name) ON UPDATE CASCADE,
    PRIMARY KEY (role, permission)
);

CREATE TABLE core.users (
    id            bigserial PRIMARY KEY,
    username      text NOT NULL CHECK (username ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$'),
    password_hash text NOT NULL,
    role          text NOT NULL REFERENCES core.roles (name) ON UPDATE CASCADE,
    email         text NOT NULL DEFAULT '' CHECK (length(email) <= 254),
    active        boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- Usernames are unique whatever their case: "Alice" and "alice" are one person.
CREATE UNIQUE INDEX users_username_lower_key ON core.users (lower(username));

-- One table for every kind of credential, so logout and deactivation have one
-- place to act. A 'login' session lives on the auth host; each 'service'
-- session was exchanged from a login session's SSO code and dies with it;
-- 'api' sessions are bearer tokens. Only a SHA-256 of the token is stored.
CREATE TABLE core.sessions (
    id          bigserial PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    user_id     bigint NOT NULL REFERENCES core.users (id),
    kind        text NOT NULL CHECK (kind IN ('login', 'service', 'api')),
    parent_id   bigint REFERENCES core.sessions (id),
    host        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    CHECK ((kind = 'service') = (parent_id IS NOT NULL))
);
CREATE INDEX sessions_parent_idx ON core.sessions (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX sessions_user_idx ON core.sessions (user_id);

-- Authorization codes of the SSO flow: short-lived, single use, bound to the
-- host they were issued for.
CREATE TABLE core.sso_codes (
    code_hash   bytea PRIMARY KEY,
    session_id  bigint NOT NULL REFERENCES core.sessions (id),
    host        text NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);

CREATE TABLE core.login_failures (
    id          bigserial PRIMARY KEY,
    username    text NOT NULL,
    address     text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_username_idx ON core.login_failures (lower(username), at);
CREATE INDEX login_failures_address_idx ON core.login_failures (address, at);

CREATE TABLE core.tasks (
    id            bigserial PRIMARY KEY,
    title         text NOT NULL CHECK (length(btrim(title)) BETWEEN 1 AND 200),
    description   text NOT NULL DEFAULT '' CHECK (length(description) <= 5000),
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')),
    assignee_id   bigint NOT NULL REFERENCES core.users (id),
    -- Both prices are fixed once, at creation.
    assign_fee    numeric(12,2) NOT NULL CHECK (assign_fee BETWEEN 10.00 AND 20.00),
    reward        numeric(12,2) NOT NULL CHECK (reward BETWEEN 20.00 AND 40.00),
    created_by    bigint NOT NULL REFERENCES core.users (id),
    created_at    timestamptz NOT NULL DEFAULT now(),
    assigned_at   timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    CHECK ((status = 'done') = (completed_at IS NOT NULL))
);
CREATE INDEX tasks_assignee_status_idx ON core.tasks (assignee_id, status, id);
CREATE INDEX tasks_open_idx ON core.tasks (id) WHERE status = 'open';

-- The ledger: every money movement of a popug's account, signed. A fee
-- (negative) for every assignment, a reward (positive) for every completion,
-- a payout (negative) at the end of a business day. Entries are never updated.
CREATE TABLE core.ledger (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES core.users (id),
    task_id     bigint REFERENCES core.tasks (id),
    kind        text NOT NULL CHECK (kind IN ('fee', 'reward', 'payout')),
    amount      numeric(12,2) NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (kind <> 'fee' OR (amount < 0 AND task_id IS NOT NULL)),
    CHECK (kind <> 'reward' OR (amount > 0 AND task_id IS NOT NULL)),
    CHECK (kind <> 'payout' OR (amount < 0 AND task_id IS NULL))
);
CREATE INDEX ledger_user_idx ON core.ledger (user_id, created_at);
CREATE INDEX ledger_task_idx ON core.ledger (task_id);
-- A task is rewarded at most once, whatever races the application loses.
CREATE UNIQUE INDEX ledger_one_reward_per_task ON core.ledger (task_id) WHERE kind = 'reward';
