"""The hot statements stay index lookups on a new database.

A statement's plan is cached on its connection. On a new database the planner sees empty or tiny
tables, so a join against `stream_heads` or `events` may be planned as a scan of the whole table
(or a hash of it), and a filter on a table of one page as a scan of that page, and stay so while
the table grows: every import, append or refresh then costs time in proportion to the number of
accounts. These are the plans PostgreSQL caches (generic plans), asked for on a freshly migrated,
never analyzed database, with its tables empty (the planner assumes ten pages then) and with a row
in each (one page)."""

import re

import pytest

from events import relay, store
from projections.framework import by_stream
from service.crypto import datakeys
from service.crypto.datakeys import _KEY_COLUMNS, _KEY_WITH_STREAM
from service.handlers import accounts, leases
from service.handlers.token_reads import _READ
from service.workers import access_log
from service.workers.refresher import _CLAIM

_CREATION_KINDS = (
    (accounts._INTEGRATION_AT, accounts._INTEGRATION_AT_COLUMNS, True),
    (_KEY_WITH_STREAM, _KEY_COLUMNS, True),
    (accounts._SCHEDULE_WITH_STREAM, accounts._SCHEDULE_COLUMNS, False),
)

STATEMENTS = {
    "account creation (import)": store._creation_sql(_CREATION_KINDS),
    "account creation, JSON documents": store._creation_sql(_CREATION_KINDS, store.JSON_FORM),
    "account creation answering streams": store._creation_sql(_CREATION_KINDS, answer="streams"),
    "group-commit append": store._APPEND_BATCH,
    "head reads": store._READ_HEADS,
    "token read": _READ,
    "refresh leases and schedule": leases._BOOKKEEPING,
    "refresh claim": _CLAIM,
    "which streams exist (bulk import)": accounts._EXISTING,
    "data keys of several owners": datakeys._SELECT_MANY,
    "first events (relay)": relay._FIRST_EVENTS,
    "head snapshots (access log)": access_log._SNAPSHOTS,
    "account rows (account_view)": by_stream('"account_view"', "stream_id, state"),
    "stream scopes (audit_trail)": by_stream('"audit_trail_streams"', "stream_id, environment, integration"),
    "accounts (migration_health)": by_stream('"migration_health_accounts"', "stream_id, status"),
}

# Whole-table work on a table that grows with the accounts or the log.
_WHOLE_TABLE = re.compile(
    r"Seq Scan on (stream_heads|events|refresh_schedule|refresh_leases|data_keys|account_view|audit_trail_streams"
    r"|migration_health_accounts)\b|hashed SubPlan")

# One row in each table that grows: what a database that has just begun to be used holds.
_ONE_ROW_EACH = """
INSERT INTO stream_heads (stream_id, version, last_hash, last_tx, snapshot, snapshot_version)
  VALUES ('account-00000000-0000-0000-0000-000000000001', 1, '\\x00', '1', '{}', 1);
INSERT INTO events (event_id, stream_id, version, type, schema_version, data, occurred_at, actor, prev_hash, hash)
  VALUES (gen_random_uuid(), 'account-00000000-0000-0000-0000-000000000001', 1, 'AccountConnecting', 1, '{}', now(),
          'system', '\\x00', '\\x00');
INSERT INTO data_keys (owner, key_id, kek_id, wrapped) VALUES ('account-x', 'dk_x', 'kek', '\\x00');
INSERT INTO refresh_schedule (account_id, due_at) VALUES ('00000000-0000-0000-0000-000000000001', now());
INSERT INTO refresh_leases (account_id, holder, expires_at) VALUES ('00000000-0000-0000-0000-000000000001', 'h', now());
INSERT INTO account_view (stream_id, account_id, environment, integration, tenant_id, status, version, state)
  VALUES ('account-x', '00000000-0000-0000-0000-000000000001', 'e', 'i', 't', 'active', 1, '{}');
INSERT INTO audit_trail_streams (stream_id, environment, integration) VALUES ('account-x', 'e', 'i');
INSERT INTO migration_health_accounts (stream_id, environment, integration, status) VALUES ('account-x', 'e', 'i', 'active');
"""


@pytest.mark.parametrize("tables", ["empty", "one row each"])
@pytest.mark.parametrize("name", list(STATEMENTS))
async def test_cached_plan_looks_rows_up_by_key(owner, name, tables):
    if tables == "one row each":
        await owner.execute(_ONE_ROW_EACH)
    sql = STATEMENTS[name]
    parameters = len((await owner.prepare(sql)).get_parameters())
    await owner.execute("SET plan_cache_mode = force_generic_plan")
    await owner.execute(f"PREPARE hot AS {sql}")
    plan = "\n".join(row[0] for row in await owner.fetch(
        f"EXPLAIN EXECUTE hot({', '.join(['NULL'] * parameters)})"))
    assert not _WHOLE_TABLE.search(plan), f"{name} plans whole-table work:\n{plan}"
