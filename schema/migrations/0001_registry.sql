-- Registry: regions → enterprises → sites (hazard sources) → sensors; gateways per enterprise.
-- Hand-edited YAML is imported into these tables (hazardwatch registry import).

CREATE TABLE regions (
    code        text PRIMARY KEY,                       -- administrative division code, e.g. 370105
    name        text NOT NULL,
    parent      text REFERENCES regions (code) DEFERRABLE INITIALLY DEFERRED
);

CREATE TABLE enterprises (
    id          serial PRIMARY KEY,
    code        text NOT NULL UNIQUE                    -- 统一社会信用代码, used in MQTT topics
                CHECK (code ~ '^[0-9A-HJ-NPQRTUWXY]{2}[0-9]{6}[0-9A-HJ-NPQRTUWXY]{10}$'),
    name        text NOT NULL,
    region      text NOT NULL REFERENCES regions (code),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TYPE site_kind AS ENUM ('major_hazard', 'gas_pipeline', 'dust_explosion');

CREATE TABLE sites (
    id            serial PRIMARY KEY,
    enterprise_id int NOT NULL REFERENCES enterprises (id) ON DELETE CASCADE,
    code          text NOT NULL,
    name          text NOT NULL,
    kind          site_kind NOT NULL,
    grade         smallint NOT NULL CHECK (grade BETWEEN 1 AND 4),  -- 1 most severe
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enterprise_id, code)
);

CREATE TABLE gateways (
    id            serial PRIMARY KEY,
    enterprise_id int NOT NULL REFERENCES enterprises (id) ON DELETE CASCADE,
    code          text NOT NULL CHECK (code ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    name          text,
    -- MQTT identity: "<enterprise code>/<gateway code>", also the topic segment pair.
    username      text NOT NULL UNIQUE,
    password_hash text,
    online        boolean,                              -- null: never reported
    state_at      timestamptz,                          -- when online last changed
    last_seen     timestamptz,                          -- newest message of any kind
    last_seq      bigint,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enterprise_id, code)
);

CREATE TABLE sensors (
    id            serial PRIMARY KEY,
    enterprise_id int NOT NULL REFERENCES enterprises (id) ON DELETE CASCADE,
    site_id       int NOT NULL REFERENCES sites (id) ON DELETE CASCADE,
    gateway_id    int REFERENCES gateways (id) ON DELETE SET NULL,
    tag           text NOT NULL,
    kind          text NOT NULL,                        -- level, temperature, pressure, gas_lel, ...
    unit          text NOT NULL,
    range_lo      float8 NOT NULL,
    range_hi      float8 NOT NULL,
    ll            float8,
    l             float8,
    h             float8,
    hh            float8,
    interval_s    real NOT NULL CHECK (interval_s > 0),
    rules         jsonb NOT NULL DEFAULT '{}',          -- per-sensor rule overrides
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (enterprise_id, tag),
    CHECK (range_lo < range_hi),
    CHECK (ll IS NULL OR l IS NULL OR ll <= l),
    CHECK (h IS NULL OR hh IS NULL OR h <= hh),
    CHECK (l IS NULL OR h IS NULL OR l < h)
);
CREATE INDEX sensors_site ON sensors (site_id);
CREATE INDEX sensors_tag ON sensors (tag);

-- A counter bumped by any registry change, so long-running processes can poll one row
-- cheaply instead of reloading the whole registry on a timer.
CREATE TABLE registry_meta (
    one       boolean PRIMARY KEY DEFAULT true CHECK (one),
    version   bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO registry_meta DEFAULT VALUES;

CREATE FUNCTION registry_bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE registry_meta SET version = version + 1, changed_at = now();
    PERFORM pg_notify('hw_registry', '');
    RETURN NULL;
END $$;

CREATE TRIGGER regions_bump AFTER INSERT OR UPDATE OR DELETE ON regions
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER enterprises_bump AFTER INSERT OR UPDATE OR DELETE ON enterprises
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER sites_bump AFTER INSERT OR UPDATE OR DELETE ON sites
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER sensors_bump AFTER INSERT OR UPDATE OR DELETE ON sensors
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
-- gateways: only identity changes matter; online/last_seen updates must not bump.
CREATE TRIGGER gateways_bump AFTER INSERT OR DELETE ON gateways
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
CREATE TRIGGER gateways_bump_identity AFTER UPDATE OF enterprise_id, code, username ON gateways
    FOR EACH STATEMENT EXECUTE FUNCTION registry_bump();
