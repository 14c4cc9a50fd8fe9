-- A rebuild builds a projection's indexes on several connections at once, so their DDL is listed
-- as statements in steps: the statements of one step may run at the same time, each step after the
-- one before. A primary key is built as a plain unique index first (CREATE INDEX locks out no other
-- CREATE INDEX on the table; ADD PRIMARY KEY would) and attached as the primary key afterwards;
-- the outcome is the same constraint and index as ADD PRIMARY KEY builds. Within a step the
-- longest-running statement comes first, so that it starts first.

CREATE FUNCTION ll_projection_index_steps(projection text, suffix text)
RETURNS TABLE (step integer, statement text) LANGUAGE plpgsql AS $$
BEGIN
  IF projection = 'account_view' THEN
    RETURN QUERY VALUES
      (1, format('CREATE INDEX %I ON %I (environment, stream_id)', 'account_view' || suffix || '_env',
        'account_view' || suffix)),
      (1, format('CREATE UNIQUE INDEX %I ON %I (account_id)', 'account_view' || suffix || '_account',
        'account_view' || suffix));
  ELSIF projection = 'audit_trail' THEN
    RETURN QUERY VALUES
      (1, format('CREATE INDEX %I ON %I (environment, tx, position)', 'audit_trail' || suffix || '_env',
        'audit_trail' || suffix)),
      (1, format('CREATE UNIQUE INDEX %I ON %I (tx, position)', 'audit_trail' || suffix || '_pkey',
        'audit_trail' || suffix)),
      (1, format('CREATE INDEX %I ON %I (account_id, tx, position)', 'audit_trail' || suffix || '_account',
        'audit_trail' || suffix)),
      (2, format('ALTER TABLE %I ADD CONSTRAINT %I PRIMARY KEY USING INDEX %I', 'audit_trail' || suffix,
        'audit_trail' || suffix || '_pkey', 'audit_trail' || suffix || '_pkey'));
  END IF;
END
$$;

-- The same indexes, one statement after another (one definition for both).
CREATE OR REPLACE FUNCTION ll_projection_indexes(projection text, suffix text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  ddl text;
BEGIN
  FOR ddl IN SELECT s.statement FROM ll_projection_index_steps(projection, suffix) AS s ORDER BY s.step LOOP
    EXECUTE ddl;
  END LOOP;
END
$$;
