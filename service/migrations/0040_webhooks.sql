-- Webhooks: per-environment endpoints, their signing secrets (wrapped by the keyring, never in
-- clear), one delivery per (endpoint, event, webhook name), and every attempt.
CREATE TABLE webhook_endpoints (
  id             uuid PRIMARY KEY,
  environment    text NOT NULL,
  url            text NOT NULL,
  events         text[] NOT NULL DEFAULT '{}',   -- webhook names; empty: all of them
  description    text,
  enabled        boolean NOT NULL DEFAULT true,
  disabled_at    timestamptz,
  disabled_reason text,
  failing_since  timestamptz,                     -- first failed attempt since the last success
  created_by     text NOT NULL,
  created_at     timestamptz NOT NULL,
  updated_at     timestamptz NOT NULL,
  deleted_at     timestamptz
);
CREATE INDEX webhook_endpoints_env ON webhook_endpoints (environment) WHERE deleted_at IS NULL;

CREATE TABLE webhook_secrets (
  endpoint_id  uuid NOT NULL REFERENCES webhook_endpoints (id),
  secret_id    text NOT NULL,
  kek_id       text NOT NULL,
  wrapped      bytea NOT NULL,                    -- the 32-byte signing key, wrapped by the keyring
  created_at   timestamptz NOT NULL,
  expires_at   timestamptz,                       -- set when rotated out: signs until then
  PRIMARY KEY (endpoint_id, secret_id)
);

CREATE TABLE webhook_deliveries (
  id              uuid PRIMARY KEY,               -- the `webhook-id` header, the same on every attempt
  endpoint_id     uuid NOT NULL REFERENCES webhook_endpoints (id),
  event_id        uuid NOT NULL,
  name            text NOT NULL,
  body            text NOT NULL,
  state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'succeeded', 'failed')),
  attempts        integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL,
  created_at      timestamptz NOT NULL,
  UNIQUE (endpoint_id, event_id, name)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';

CREATE TABLE webhook_attempts (
  id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  delivery_id   uuid NOT NULL REFERENCES webhook_deliveries (id),
  endpoint_id   uuid NOT NULL REFERENCES webhook_endpoints (id),
  attempt       integer NOT NULL,
  attempted_at  timestamptz NOT NULL,
  status_code   integer,
  error         text,
  duration_ms   integer NOT NULL,
  succeeded     boolean NOT NULL
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, id);

GRANT SELECT, INSERT, UPDATE ON webhook_endpoints, webhook_secrets, webhook_deliveries TO linkledger_app;
GRANT SELECT, INSERT ON webhook_attempts TO linkledger_app;
