-- ll_append as in 0001, but for how its idempotency check finds a batch's events: a probe per event
-- id instead of `event_id = ANY (...)`. The function's plans are cached per connection, and one
-- cached while the events table held a row or two scanned the whole table on every later conflict.

CREATE OR REPLACE FUNCTION ll_append(
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
    SELECT count(*) INTO stored FROM unnest(p_event_ids) AS k(event_id)
      CROSS JOIN LATERAL (SELECT FROM events e WHERE e.event_id = k.event_id LIMIT 1) AS found;
    IF stored = n THEN
      RETURN QUERY SELECT e.position, e.version, e.hash FROM unnest(p_event_ids) AS k(event_id)
        CROSS JOIN LATERAL (SELECT position, version, hash FROM events WHERE event_id = k.event_id LIMIT 1) AS e
        ORDER BY e.version;
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
