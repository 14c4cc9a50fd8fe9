-- One AES-256 data key per owner (a stream id: account-<uuid>, integration-<env>-<name>), wrapped
-- under a key-encryption key (KEK) from the keyring. Events carry key_id; rotating KEKs rewraps
-- rows here and never touches events. Shredding (account deletion) nulls the wrapped key for good.
CREATE TABLE data_keys (
  owner        text PRIMARY KEY CHECK (length(owner) BETWEEN 1 AND 200),
  key_id       text NOT NULL UNIQUE CHECK (length(key_id) BETWEEN 1 AND 200),
  kek_id       text,
  wrapped      bytea,
  created_at   timestamptz NOT NULL DEFAULT now(),
  rotated_at   timestamptz,
  shredded_at  timestamptz,
  -- Live: wrapped under a named KEK. Shredded: nothing left to unwrap.
  CONSTRAINT data_keys_live_or_shredded CHECK (
    (shredded_at IS NULL AND kek_id IS NOT NULL AND wrapped IS NOT NULL)
    OR (shredded_at IS NOT NULL AND kek_id IS NULL AND wrapped IS NULL))
);

-- A shredded key stays shredded, and a key keeps its owner and id, whoever asks.
CREATE FUNCTION ll_data_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.owner IS DISTINCT FROM OLD.owner OR NEW.key_id IS DISTINCT FROM OLD.key_id THEN
    RAISE EXCEPTION 'data key of %: owner and key_id never change', OLD.owner USING ERRCODE = 'LL004';
  END IF;
  IF OLD.shredded_at IS NOT NULL AND (NEW.shredded_at IS NULL OR NEW.wrapped IS NOT NULL) THEN
    RAISE EXCEPTION 'data key of % was shredded and cannot be restored', OLD.owner USING ERRCODE = 'LL004';
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER data_keys_guard BEFORE UPDATE ON data_keys
  FOR EACH ROW EXECUTE FUNCTION ll_data_keys_guard();

REVOKE ALL ON data_keys FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON data_keys TO linkledger_app;
