"""`account_view`: every account's current state, for the list and detail queries."""

import json
from typing import Sequence

import asyncpg

from projections import account_fold
from projections.framework import Tables, by_stream
from projections.source import LoggedEvent

# A rebuild's narrow scan for this fold alone (arguments as source.READ_BETWEEN's): no columns it does
# not use, and no payload where the fold needs none (other streams' events, reads) — decoding payloads
# is most of a rebuild's Python time.
SCAN_BETWEEN = (
    "SELECT tx, position, stream_id, type,"
    " CASE WHEN stream_id LIKE 'account-%' AND type <> ALL($6::text[]) THEN data END"
    " FROM events WHERE (tx, position) > ($1::xid8, $2::bigint) AND (tx, position) <= ($4::xid8, $5::bigint)"
    " ORDER BY tx, position LIMIT $3"
)
SCAN_ARGS = (sorted(account_fold.READS),)
_JSON_SCANNER = json.JSONDecoder().scan_once

COLUMNS = ("stream_id", "account_id", "environment", "integration", "tenant_id", "status", "version", "state")


def is_account_event(event: LoggedEvent) -> bool:
    return event.stream_id.startswith("account-")


# The state column is jsonb, which orders keys its own way: the text needs no sorted keys.
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


def row_of(stream_id: str, state: dict) -> tuple:
    return (stream_id, state["account_id"], state["environment"], state["integration"], state["tenant_id"],
            state["status"], state["version"], _ENCODE(state))


class AccountViewSession:
    def __init__(self) -> None:
        self.states: dict[str, dict] = {}
        self.touched: set[str] = set()

    async def load(self, conn: asyncpg.Connection, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        wanted = list({e.stream_id for e in events if is_account_event(e)} - self.states.keys())
        if wanted:
            for row in await conn.fetch(by_stream(tables("account_view"), "stream_id, state"), wanted):
                self.states[row["stream_id"]] = json.loads(row["state"])

    def apply(self, event: LoggedEvent) -> None:
        if not is_account_event(event):
            return
        stream_id = event.stream_id
        state = self.states.get(stream_id)
        if state is None:
            state = self.states[stream_id] = account_fold.blank(account_fold.account_id_of(stream_id))
        account_fold.evolve_in_place(state, event.type, event.data)  # the session owns its states
        self.touched.add(stream_id)

    def apply_scanned(self, rows: Sequence[asyncpg.Record]) -> None:
        """apply() over rows of SCAN_BETWEEN, in order: the same states, at a fraction of the work."""
        states, touched, evolve = self.states, self.touched, account_fold.evolve_in_place
        # The C scanner behind json.loads, without its per-call wrappers and whitespace regexes:
        # stored payloads are canonical JSON (no surrounding whitespace), read whole.
        scan = _JSON_SCANNER
        for row in rows:
            stream_id = row[2]
            if not stream_id.startswith("account-"):
                continue
            state = states.get(stream_id)
            if state is None:
                state = states[stream_id] = account_fold.blank(account_fold.account_id_of(stream_id))
            payload = row[4]
            if payload is None:
                state["version"] += 1  # a read: what evolve() would do with it
            else:
                evolve(state, row[3], scan(payload, 0)[0])
            touched.add(stream_id)

    async def save(self, conn: asyncpg.Connection, tables: Tables, *, bulk: bool) -> None:
        rows = [row_of(s, self.states[s]) for s in self.touched if self.states[s]["status"] is not None]
        self.touched.clear()
        if not rows:
            return
        table = tables("account_view")
        if bulk:
            await conn.copy_records_to_table(tables.name("account_view"), records=rows, columns=COLUMNS)
            return
        await conn.execute(
            f"INSERT INTO {table} ({', '.join(COLUMNS)})"
            " SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::text[],"
            " $7::int[], $8::jsonb[])"
            " ON CONFLICT (stream_id) DO UPDATE SET status = excluded.status, version = excluded.version,"
            " state = excluded.state, tenant_id = excluded.tenant_id",
            *(list(column) for column in zip(*rows)),
        )


class AccountView:
    name = "account_view"
    tables = ("account_view",)
    scan = (SCAN_BETWEEN, SCAN_ARGS)  # a rebuild folding only this projection in Python reads this way

    def session(self) -> AccountViewSession:
        return AccountViewSession()
