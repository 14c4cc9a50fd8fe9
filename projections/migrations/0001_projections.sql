-- Projection tables. Their DDL lives in one function so that the live tables (suffix '') and the
-- blue/green rebuild's fresh tables (suffix '__next') are always the same shape. The indexes of the
-- big tables come separately: a rebuild loads rows first and indexes them afterwards, which is faster.

CREATE FUNCTION ll_projection_tables(projection text, suffix text) RETURNS text[] LANGUAGE plpgsql AS $$
DECLARE
  created text[];
  t text;
BEGIN
  IF projection = 'account_view' THEN
    EXECUTE format('CREATE TABLE %I (
      stream_id text PRIMARY KEY, account_id uuid NOT NULL, environment text NOT NULL, integration text NOT NULL,
      tenant_id text NOT NULL, status text NOT NULL, version integer NOT NULL, state jsonb NOT NULL)',
      'account_view' || suffix);
    created := ARRAY['account_view' || suffix];
  ELSIF projection = 'audit_trail' THEN
    EXECUTE format('CREATE TABLE %I (
      tx xid8 NOT NULL, position bigint NOT NULL, event_id uuid NOT NULL, occurred_at timestamptz NOT NULL,
      environment text, integration text, stream_id text NOT NULL, account_id uuid, version integer NOT NULL,
      actor text NOT NULL, action text NOT NULL, outcome text NOT NULL, correlation_id uuid, causation_id uuid,
      detail jsonb NOT NULL)', 'audit_trail' || suffix);
    -- Which environment and integration each stream belongs to (named once, by its first event).
    EXECUTE format('CREATE TABLE %I (stream_id text PRIMARY KEY, environment text, integration text)',
      'audit_trail_streams' || suffix);
    created := ARRAY['audit_trail' || suffix, 'audit_trail_streams' || suffix];
  ELSIF projection = 'migration_health' THEN
    EXECUTE format('CREATE TABLE %I (
      stream_id text PRIMARY KEY, environment text NOT NULL, integration text NOT NULL, status text NOT NULL,
      needs_reauth_since timestamptz)', 'migration_health_accounts' || suffix);
    EXECUTE format('CREATE TABLE %I (
      environment text NOT NULL, integration text NOT NULL, imported bigint NOT NULL DEFAULT 0,
      refreshes_succeeded bigint NOT NULL DEFAULT 0, refreshes_failed bigint NOT NULL DEFAULT 0,
      needs_reauth_entered bigint NOT NULL DEFAULT 0, reactivations bigint NOT NULL DEFAULT 0,
      auto_reactivations bigint NOT NULL DEFAULT 0, reconnect_seconds bigint NOT NULL DEFAULT 0,
      PRIMARY KEY (environment, integration))', 'migration_health_counters' || suffix);
    created := ARRAY['migration_health_accounts' || suffix, 'migration_health_counters' || suffix];
  ELSE
    RAISE EXCEPTION 'unknown projection %', projection;
  END IF;
  -- The checkpoint lives beside the rows and is renamed with them at a swap.
  EXECUTE format('CREATE TABLE %I (singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    tx xid8 NOT NULL, position bigint NOT NULL, events bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now())', projection || '_checkpoint' || suffix);
  EXECUTE format('INSERT INTO %I (tx, position) VALUES (''0''::xid8, 0)', projection || '_checkpoint' || suffix);
  created := created || (projection || '_checkpoint' || suffix);
  FOREACH t IN ARRAY created LOOP
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO linkledger_app', t);
  END LOOP;
  RETURN created;
END
$$;

CREATE FUNCTION ll_projection_indexes(projection text, suffix text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF projection = 'account_view' THEN
    EXECUTE format('CREATE INDEX %I ON %I (environment, stream_id)', 'account_view' || suffix || '_env',
      'account_view' || suffix);
    EXECUTE format('CREATE UNIQUE INDEX %I ON %I (account_id)', 'account_view' || suffix || '_account',
      'account_view' || suffix);
  ELSIF projection = 'audit_trail' THEN
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY (tx, position)', 'audit_trail' || suffix,
      'audit_trail' || suffix || '_pkey');
    EXECUTE format('CREATE INDEX %I ON %I (account_id, tx, position)', 'audit_trail' || suffix || '_account',
      'audit_trail' || suffix);
    EXECUTE format('CREATE INDEX %I ON %I (environment, tx, position)', 'audit_trail' || suffix || '_env',
      'audit_trail' || suffix);
  END IF;
END
$$;

SELECT ll_projection_tables(p, '') FROM unnest(ARRAY['account_view', 'audit_trail', 'migration_health']) AS p;
SELECT ll_projection_indexes(p, '') FROM unnest(ARRAY['account_view', 'audit_trail', 'migration_health']) AS p;
