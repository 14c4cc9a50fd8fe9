-- Publication to NATS JetStream: the relay's checkpoint, and a role that can read the log but
-- not its secret column (the relay never sees ciphertext, whoever configures it).

DO $$
BEGIN
  CREATE ROLE linkledger_relay NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;  -- roles are cluster-wide: another database (or replica) created it first
END
$$;
-- The service's role may act as the relay (SET ROLE), which can do less than it can.
GRANT linkledger_relay TO linkledger_app;

-- One row per relay: the (tx, position) of the last event whose publication was acknowledged,
-- in the log's (tx, position) order. Only moved forward.
CREATE TABLE relay_checkpoints (
  name        text PRIMARY KEY,
  tx          xid8 NOT NULL DEFAULT '0',
  position    bigint NOT NULL DEFAULT 0,
  published   bigint NOT NULL DEFAULT 0,
  updated_at  timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE ON relay_checkpoints TO linkledger_app, linkledger_relay;

-- Every column but `secret` (and the hash chain, which subscribers do not need).
GRANT SELECT (position, tx, event_id, stream_id, version, type, schema_version, data, occurred_at, actor,
              correlation_id, causation_id) ON events TO linkledger_relay;
-- The lag figure reads how far the log's positions have gone.
DO $$
BEGIN
  EXECUTE format('GRANT SELECT ON SEQUENCE %s TO linkledger_relay', pg_get_serial_sequence('events', 'position'));
END
$$;
-- The relay's horizon looks only at transactions of this database (see events/relay.py), which
-- needs to see other sessions' transaction ids. Without the grant (a migration run by a role that
-- may not give it) the relay falls back to the cluster-wide horizon, correct but slower to follow.
DO $$
BEGIN
  GRANT pg_read_all_stats TO linkledger_relay;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'linkledger_relay cannot be granted pg_read_all_stats: the relay uses the cluster-wide horizon';
END
$$;
