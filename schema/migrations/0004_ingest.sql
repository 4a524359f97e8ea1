-- What ingest could not store as sent, kept so an enterprise can be told exactly why.
-- One row per message that had any rejection; errors lists every problem with its field.
-- Bounded by age and count (ingest prunes; see settings.ingest.dead_letter_*).
CREATE TABLE dead_letters (
    id                bigserial PRIMARY KEY,
    received_at       timestamptz NOT NULL DEFAULT now(),
    topic             text NOT NULL,
    dialect           text NOT NULL,
    enterprise_code   text,
    gateway_code      text,
    reason            text NOT NULL,                    -- the first problem's reason code
    errors            jsonb NOT NULL,                   -- [{reason, field, tag, detail}]
    accepted          int NOT NULL DEFAULT 0,           -- readings of the message stored
    rejected          int NOT NULL DEFAULT 0,           -- readings of the message refused
    payload           bytea NOT NULL,
    payload_truncated boolean NOT NULL DEFAULT false
);
CREATE INDEX dead_letters_gateway ON dead_letters (enterprise_code, gateway_code, received_at DESC);
CREATE INDEX dead_letters_received ON dead_letters (received_at);

-- Tags (and gateways) that arrive but are not in the registry: the onboarding list.
CREATE TABLE unregistered_tags (
    enterprise_code text NOT NULL,
    gateway_code    text NOT NULL,
    tag             text NOT NULL,
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    count           bigint NOT NULL,
    last_value      float8,
    PRIMARY KEY (enterprise_code, gateway_code, tag)
);
