-- Warning lifecycle (ISA-18.2), escalation, audit trail, notification outbox, users.
-- The rule engine owns warnings.level/active/count/peak/cleared_at; alerting owns the rest.

ALTER TABLE warnings
    ADD COLUMN acknowledged_at  timestamptz,
    ADD COLUMN acknowledged_by  text,
    ADD COLUMN disposed_at      timestamptz,            -- disposal (处置) reported
    ADD COLUMN disposed_by      text,
    ADD COLUMN disposal         text,                   -- the latest disposal note
    ADD COLUMN closed_by        text,
    ADD COLUMN closing_note     text,                   -- 闭环: closing needs a disposal note
    ADD COLUMN shelved_until    timestamptz,            -- shelved (maintenance) until then
    ADD COLUMN shelved_reason   text,
    ADD COLUMN shelved_by       text,
    ADD COLUMN suppressed_by    bigint REFERENCES warnings (id) ON DELETE SET NULL,  -- parent cause
    ADD COLUMN escalation       smallint NOT NULL DEFAULT 0
                                CHECK (escalation BETWEEN 0 AND 2),  -- 0 提示, 1 警示, 2 督办
    ADD COLUMN escalated_at     timestamptz;

-- ISA-18.2 state, derived so it can never disagree with the flags it comes from.
ALTER TABLE warnings ADD COLUMN state text GENERATED ALWAYS AS (
    CASE WHEN closed_at IS NOT NULL THEN 'closed'
         WHEN active AND NOT acknowledged THEN 'active_unack'
         WHEN active THEN 'active_ack'
         WHEN NOT acknowledged THEN 'cleared_unack'
         ELSE 'cleared' END) STORED;
CREATE INDEX warnings_state ON warnings (state, level DESC, raised_at);
CREATE INDEX warnings_site ON warnings (site_id, raised_at DESC);

-- Append-only audit trail: who did what when. The database refuses changes to history.
CREATE TABLE warning_events (
    id          bigserial PRIMARY KEY,
    warning_id  bigint NOT NULL REFERENCES warnings (id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,                          -- a user name, or 'system'
    action      text NOT NULL,                          -- raised, level_up, cleared, reactivated,
                                                        -- acknowledged, commented, disposed, closed,
                                                        -- shelved, unshelved, suppressed, escalated
    level       smallint,                               -- the warning's level after the event
    detail      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX warning_events_warning ON warning_events (warning_id, id);

CREATE FUNCTION warning_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'warning_events is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER warning_events_no_update BEFORE UPDATE OR DELETE ON warning_events
    FOR EACH ROW EXECUTE FUNCTION warning_events_append_only();
CREATE TRIGGER warning_events_no_truncate BEFORE TRUNCATE ON warning_events
    FOR EACH STATEMENT EXECUTE FUNCTION warning_events_append_only();

-- Every new event wakes the console streams (SSE) and the outbox dispatcher.
CREATE FUNCTION warning_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('hw_events', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER warning_events_notify AFTER INSERT ON warning_events
    FOR EACH ROW EXECUTE FUNCTION warning_events_notify();

-- Notifications to deliver, written in the same transaction as the event (durable outbox).
-- One row per event and receiver: the unique key is what makes "once per event id" hold.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    event_id      bigint NOT NULL REFERENCES warning_events (id) ON DELETE CASCADE,
    receiver      text NOT NULL,                        -- a configured receiver's name
    created_at    timestamptz NOT NULL DEFAULT now(),
    next_at       timestamptz NOT NULL DEFAULT now(),   -- not before (back-off)
    attempts      int NOT NULL DEFAULT 0,
    delivered_at  timestamptz,
    failed_at     timestamptz,                          -- gave up after max attempts
    last_error    text,
    outcome       text CHECK (outcome IN ('sent', 'muted', 'failed')),
    UNIQUE (event_id, receiver)
);
CREATE INDEX outbox_due ON outbox (next_at) WHERE delivered_at IS NULL AND failed_at IS NULL;

-- People: duty officers (scoped to a region and its children), enterprises, admins.
CREATE TABLE users (
    id             serial PRIMARY KEY,
    username       text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    display_name   text,
    password_hash  text NOT NULL,                       -- argon2id
    role           text NOT NULL CHECK (role IN ('officer', 'enterprise', 'admin')),
    region         text REFERENCES regions (code),
    enterprise_id  int REFERENCES enterprises (id) ON DELETE CASCADE,
    disabled       boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'officer' OR region IS NOT NULL),
    CHECK (role <> 'enterprise' OR enterprise_id IS NOT NULL)
);

-- Bearer tokens, stored hashed (sha256 of the token); revocable, expiring.
CREATE TABLE api_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     int NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    last_used   timestamptz
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);
