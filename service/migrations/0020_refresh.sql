-- One refresh per grant across processes: a lease row per account, taken before calling the
-- provider and released after the outcome is appended. A lease that outlives its holder (crash)
-- expires; the append is fenced by the stream version besides.
CREATE TABLE refresh_leases (
  account_id  uuid PRIMARY KEY,
  holder      text NOT NULL,
  expires_at  timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON refresh_leases TO linkledger_app;

-- Proactive refresh: when each account is next due. Claimed with FOR UPDATE SKIP LOCKED, so any
-- number of worker processes share the work.
CREATE TABLE refresh_schedule (
  account_id  uuid PRIMARY KEY,
  due_at      timestamptz NOT NULL,
  attempt     integer NOT NULL DEFAULT 0
);
CREATE INDEX refresh_schedule_due ON refresh_schedule (due_at);
GRANT SELECT, INSERT, UPDATE, DELETE ON refresh_schedule TO linkledger_app;
