"""The hot statements stay index lookups on a new database.

A statement's plan is cached on its connection. On a new database the planner sees near-empty
tables, so a join against `stream_heads` or `events` may be planned as a scan of the whole table
(or a hash of it) and stay so while the table grows: every import, append or refresh then costs
time in proportion to the number of accounts. These are the plans PostgreSQL caches (generic
plans), asked for on a freshly migrated, never analyzed database."""

import re

import pytest

from events import store
from service.crypto.datakeys import _KEY_COLUMNS, _KEY_WITH_STREAM
from service.handlers import accounts, leases
from service.handlers.token_reads import _READ
from service.workers.refresher import _CLAIM

_CREATION = store._creation_sql((
    (accounts._INTEGRATION_AT, accounts._INTEGRATION_AT_COLUMNS, True),
    (_KEY_WITH_STREAM, _KEY_COLUMNS, True),
    (accounts._SCHEDULE_WITH_STREAM, accounts._SCHEDULE_COLUMNS, False),
))

STATEMENTS = {
    "account creation (import)": _CREATION,
    "group-commit append": store._APPEND_BATCH,
    "head reads": store._READ_HEADS,
    "token read": _READ,
    "refresh leases and schedule": leases._BOOKKEEPING,
    "refresh claim": _CLAIM,
}

# Whole-table work on a table that grows with the accounts or the log.
_WHOLE_TABLE = re.compile(r"Seq Scan on (stream_heads|events|refresh_schedule|data_keys)\b|hashed SubPlan")


@pytest.mark.parametrize("name", list(STATEMENTS))
async def test_cached_plan_looks_rows_up_by_key(owner, name):
    sql = STATEMENTS[name]
    parameters = len((await owner.prepare(sql)).get_parameters())
    await owner.execute("SET plan_cache_mode = force_generic_plan")
    await owner.execute(f"PREPARE hot AS {sql}")
    plan = "\n".join(row[0] for row in await owner.fetch(
        f"EXPLAIN EXECUTE hot({', '.join(['NULL'] * parameters)})"))
    assert not _WHOLE_TABLE.search(plan), f"{name} plans whole-table work:\n{plan}"
