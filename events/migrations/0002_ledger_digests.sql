-- Signed ledger digests (invariant 5): the heads of every stream at an instant, signed with
-- Ed25519 and chained to the previous digest, so a deleted stream, a deleted tail or a deleted
-- digest is caught by verify.
CREATE TABLE ledger_digests (
  digest_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  created_at   timestamptz NOT NULL,
  body         text NOT NULL,          -- canonical JSON that was signed
  body_hash    bytea NOT NULL,
  prev_hash    bytea NOT NULL,
  signature    bytea NOT NULL,
  public_key   bytea NOT NULL,
  stream_count integer NOT NULL,
  last_position bigint
);
CREATE TRIGGER ledger_digests_immutable BEFORE UPDATE OR DELETE ON ledger_digests
  FOR EACH ROW EXECUTE FUNCTION ll_refuse_change();
CREATE TRIGGER ledger_digests_no_truncate BEFORE TRUNCATE ON ledger_digests
  FOR EACH STATEMENT EXECUTE FUNCTION ll_refuse_change();
REVOKE ALL ON ledger_digests FROM PUBLIC;
GRANT SELECT, INSERT ON ledger_digests TO linkledger_app;
