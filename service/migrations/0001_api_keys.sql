-- API keys: only a hash is stored; the key itself is shown once, when created.
CREATE TABLE api_keys (
  key_id        text PRIMARY KEY,            -- public part, e.g. "key_3f9a2b7c1d4e", recorded as the actor of events
  secret_hash   bytea NOT NULL UNIQUE,       -- SHA-256 of the whole key (keys are 256-bit random)
  role          text NOT NULL CHECK (role IN ('admin', 'operator', 'service', 'auditor')),
  environments  text[] NOT NULL,             -- '{*}' for every environment
  name          text NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  created_by    text NOT NULL,
  revoked_at    timestamptz
);
GRANT SELECT, INSERT, UPDATE ON api_keys TO linkledger_app;

-- Idempotency-Key handling for POST commands: the first response is replayed for a repeat.
CREATE TABLE idempotency_keys (
  key_id        text NOT NULL,               -- the api key that sent it: keys are per caller
  idempotency_key text NOT NULL,
  request_hash  bytea NOT NULL,
  status        integer NOT NULL,
  body          jsonb NOT NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (key_id, idempotency_key)
);
GRANT SELECT, INSERT, DELETE ON idempotency_keys TO linkledger_app;

-- Account list queries read the stream-head snapshots until the projections take over.
CREATE INDEX stream_heads_accounts ON stream_heads ((snapshot->>'environment'), stream_id)
  WHERE stream_id LIKE 'account-%';
