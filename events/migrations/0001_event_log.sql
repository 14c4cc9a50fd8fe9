-- The event log: one append-only table, a head row per stream, and the append function.

DO $$
BEGIN
  CREATE ROLE linkledger_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;  -- roles are cluster-wide: another database (or replica) created it first
END
$$;

CREATE TABLE events (
  position        bigint GENERATED ALWAYS AS IDENTITY,
  tx              xid8 NOT NULL DEFAULT pg_current_xact_id(),
  event_id        uuid PRIMARY KEY,
  stream_id       text NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
  version         integer NOT NULL CHECK (version >= 1),
  type            text NOT NULL CHECK (length(type) BETWEEN 1 AND 200),
  schema_version  smallint NOT NULL CHECK (schema_version >= 1),
  data            text NOT NULL CHECK (octet_length(data) <= 1048576),
  secret          bytea CHECK (octet_length(secret) <= 1048576),
  key_id          text,
  occurred_at     timestamptz NOT NULL,
  actor           text NOT NULL,
  correlation_id  uuid,
  causation_id    uuid,
  prev_hash       bytea NOT NULL,
  hash            bytea NOT NULL,
  UNIQUE (stream_id, version)
);
-- Readers follow the log in (tx, position) order; position alone is unique by construction.
CREATE UNIQUE INDEX events_log_order ON events (tx, position);

-- The command side's consistent view of a stream, written in the append's own transaction.
CREATE TABLE stream_heads (
  stream_id         text PRIMARY KEY,
  version           integer NOT NULL,
  last_hash         bytea NOT NULL,
  prev_hash         bytea,             -- the hash before last_hash: lets a one-statement append chain
  last_tx           xid8 NOT NULL,
  snapshot          jsonb,
  snapshot_version  integer,
  updated_at        timestamptz NOT NULL DEFAULT now()
);

-- Invariant 4: events are immutable, whoever asks.
CREATE FUNCTION ll_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION 'the % table is append-only: % refused', TG_TABLE_NAME, TG_OP
    USING ERRCODE = 'LL004';
END
$$;
CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON events
  FOR EACH ROW EXECUTE FUNCTION ll_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
  FOR EACH STATEMENT EXECUTE FUNCTION ll_refuse_change();

REVOKE ALL ON events FROM PUBLIC;
GRANT SELECT, INSERT ON events TO linkledger_app;
GRANT SELECT, INSERT, UPDATE ON stream_heads TO linkledger_app;

-- Append events to one stream in one round trip.
--
-- Errors: LL001 wrong expected version (DETAIL carries the actual version), LL002 the append was
-- not the first write of its transaction, LL003 this transaction's id is older than the stream's
-- last writer's (retry in a new transaction), LL005 some but not all event ids already stored,
-- LL006 an empty batch; a unique violation on event_id means the id is used by another event.
--
-- Invariant 2 (per-stream order holds in the (tx, position) order): the head row is the first thing
-- this transaction writes or locks, and the transaction id is checked against the last writer's, so
-- a stream's events always carry increasing transaction ids.
CREATE FUNCTION ll_append(
  p_stream_id text,
  p_expected_version integer,
  p_event_ids uuid[],
  p_types text[],
  p_schema_versions smallint[],
  p_data text[],
  p_secrets bytea[],
  p_key_ids text[],
  p_occurred_at timestamptz[],
  p_actors text[],
  p_correlation_ids uuid[],
  p_causation_ids uuid[],
  p_body_hashes bytea[],
  p_snapshot jsonb
) RETURNS TABLE (out_position bigint, out_version integer, out_hash bytea)
LANGUAGE plpgsql AS $$
DECLARE
  n integer := cardinality(p_event_ids);
  head_version integer;
  head_hash bytea;
  head_tx xid8;
  stored integer;
  h bytea;
  prev bytea;
  i integer;
BEGIN
  IF n = 0 THEN
    RAISE EXCEPTION 'an append needs at least one event' USING ERRCODE = 'LL006';
  END IF;
  IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
    RAISE EXCEPTION 'append to % must be the first write of its transaction', p_stream_id
      USING ERRCODE = 'LL002';
  END IF;

  IF p_expected_version = 0 THEN
    INSERT INTO stream_heads (stream_id, version, last_hash, last_tx)
      VALUES (p_stream_id, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, '0')
      ON CONFLICT (stream_id) DO NOTHING;
  END IF;
  SELECT version, last_hash, last_tx INTO head_version, head_hash, head_tx
    FROM stream_heads WHERE stream_id = p_stream_id FOR UPDATE;
  head_version := coalesce(head_version, 0);

  IF head_version <> p_expected_version THEN
    -- Idempotency: this very batch may be stored already (a retry, or a concurrent twin that won
    -- the race); that is success. Checked only here, because at the expected version the batch
    -- cannot be stored yet, so the common path pays nothing for it.
    SELECT count(*) INTO stored FROM events WHERE event_id = ANY (p_event_ids);
    IF stored = n THEN
      RETURN QUERY SELECT e.position, e.version, e.hash FROM events e
        WHERE e.event_id = ANY (p_event_ids) ORDER BY e.version;
      RETURN;
    ELSIF stored > 0 THEN
      RAISE EXCEPTION '% of % event ids in this batch are already stored', stored, n
        USING ERRCODE = 'LL005';
    END IF;
    RAISE EXCEPTION 'stream % is at version %, expected %', p_stream_id, head_version, p_expected_version
      USING ERRCODE = 'LL001', DETAIL = head_version::text;
  END IF;
  IF head_version > 0 AND pg_current_xact_id() <= head_tx THEN
    RAISE EXCEPTION 'transaction id older than the last writer of %', p_stream_id
      USING ERRCODE = 'LL003';
  END IF;

  h := head_hash;
  FOR i IN 1..n LOOP
    prev := h;
    h := sha256(prev || p_body_hashes[i]);
    INSERT INTO events (event_id, stream_id, version, type, schema_version, data, secret, key_id,
                        occurred_at, actor, correlation_id, causation_id, prev_hash, hash)
      VALUES (p_event_ids[i], p_stream_id, head_version + i, p_types[i], p_schema_versions[i],
              p_data[i], p_secrets[i], p_key_ids[i], p_occurred_at[i], p_actors[i],
              p_correlation_ids[i], p_causation_ids[i],
              prev, h)
      RETURNING position INTO out_position;
    out_version := head_version + i;
    out_hash := h;
    RETURN NEXT;
  END LOOP;

  UPDATE stream_heads SET version = head_version + n, prev_hash = prev, last_hash = h,
         last_tx = pg_current_xact_id(),
         snapshot = coalesce(p_snapshot, snapshot),
         snapshot_version = CASE WHEN p_snapshot IS NULL THEN snapshot_version ELSE head_version + n END,
         updated_at = now()
   WHERE stream_id = p_stream_id;
END
$$;
GRANT EXECUTE ON FUNCTION ll_append TO linkledger_app;
