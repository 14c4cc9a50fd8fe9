"""The snapshot horizon every reader of the log reads below (DESIGN invariant 1)."""

# The snapshot horizon, counting only transactions that may write to this database: the oldest
# transaction id in progress in the statement's snapshot (or its xmax when none is), leaving out
# only those positively seen as another database's backend's (a transaction cannot write to a
# database it is not connected to). A busy neighbour database on the same server (a CREATE
# DATABASE, say) does not hold the relay and the projections back. Anything not identified —
# finished by the time pg_stat_activity is read, a prepared transaction, a backend whose details
# the role may not see — still counts, so no event below the horizon can commit later. pg_stat_activity shows 32-bit xids; concurrent xids are
# always within 2^31 of each other, so comparing the low 32 bits is exact.
HORIZON = (
    "(SELECT coalesce(min(running.xid), pg_snapshot_xmax(pg_current_snapshot()))"
    " FROM pg_snapshot_xip(pg_current_snapshot()) AS running(xid)"
    " WHERE (running.xid::text::bigint % 4294967296) NOT IN ("
    "SELECT backend_xid::text::bigint FROM pg_stat_activity"
    " WHERE backend_xid IS NOT NULL AND datid IS NOT NULL"
    " AND datid <> (SELECT oid FROM pg_database WHERE datname = current_database())))"
)
