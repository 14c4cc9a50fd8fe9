-- A refresh lease is released by the append of its outcome: the lease names the event id its
-- holder will give the outcome (TokenRefreshed or TokenRefreshFailed), and a lease whose outcome
-- event exists is free. Releasing thus costs no statement of its own and is atomic with the
-- append (a crash right after it leaves nothing held). Paths that append nothing delete the row.
ALTER TABLE refresh_leases ADD COLUMN outcome_event_id uuid;

-- The leases actually held: not expired, outcome not yet appended.
CREATE VIEW refresh_leases_held AS
  SELECT l.account_id, l.holder, l.expires_at
    FROM refresh_leases l
   WHERE l.expires_at >= now()
     AND NOT EXISTS (SELECT 1 FROM events e WHERE e.event_id = l.outcome_event_id);
GRANT SELECT ON refresh_leases_held TO linkledger_app;
