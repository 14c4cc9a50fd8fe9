-- Readers of the log (the projections' runner) read below a horizon of this database's
-- transactions only (events/horizon.py), which needs to see other sessions' transaction ids.
-- Without the grant (a migration run by a role that may not give it) every transaction on the
-- server holds them back: correct, but slower to follow.
DO $$
BEGIN
  GRANT pg_read_all_stats TO linkledger_app;
EXCEPTION WHEN insufficient_privilege THEN
  RAISE NOTICE 'linkledger_app cannot be granted pg_read_all_stats: readers use the server-wide horizon';
END
$$;
