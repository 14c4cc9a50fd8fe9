-- Account lists are read from the account_view projection now, not from the stream-head
-- snapshots, so the heads' index on the snapshot's environment only cost writes: an entry for
-- every new account, and no HOT update of a head (its indexed expression reads the snapshot, which
-- every append changes). The export walks account heads in stream order by the primary key.
DROP INDEX IF EXISTS stream_heads_accounts;
