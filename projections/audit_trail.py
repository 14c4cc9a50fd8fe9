"""`audit_trail`: who did what, when, to which account, with what outcome — one row per event."""

from typing import Sequence

import asyncpg

from events.envelope import LogPosition
from projections.framework import HeapChunk, Tables, by_stream
from projections.source import LoggedEvent

COLUMNS = ("tx", "position", "event_id", "occurred_at", "environment", "integration", "stream_id", "account_id",
           "version", "actor", "action", "outcome", "correlation_id", "causation_id", "detail")

FAILURES = frozenset({"TokenRefreshFailed", "ValidationFailed", "PostInstallFailed", "AccountNeedsReauth",
                      "IntegrationFlagged"})
# The facts worth a glance in a one-line timeline (`linkledger replay`), per event type; an audit
# row's `detail` is the whole stored payload, which is secret-free by construction.
DETAIL_FIELDS = {
    "AccountConnecting": ("source", "tenant_id", "external_ref"),
    "TokensImported": ("source", "external_ref", "expires_at"),
    "AccountValidated": ("how",),
    "ValidationFailed": ("reason",),
    "PostInstallFailed": ("reason",),
    "TokenRefreshed": ("rotated", "expires_at"),
    "TokenRefreshFailed": ("failure_class", "http_status", "provider_error", "attempt"),
    "AccountNeedsReauth": ("reason",),
    "AccountReactivated": ("how", "after_seconds"),
    "AccountOverrideChanged": ("resulting_hash",),
    "CredentialsAccessed": ("accessor", "count"),
    "TokensExported": ("purpose",),
    "AccountDeleted": ("reason",),
    "EnvironmentOverrideChanged": ("resulting_hash",),
    "IntegrationFlagged": ("reason",),
    "OAuthClientConfigured": ("client_id",),
}


def scope_of_first_event(event: LoggedEvent) -> tuple[str | None, str | None]:
    """(environment, integration) named by a stream's own events, or (None, None)."""
    data = event.data
    if event.type == "AccountConnecting":
        return data.get("environment"), data.get("integration")
    if event.stream_id.startswith("integration-"):
        return data.get("environment"), data.get("name") or data.get("integration")
    if event.stream_id.startswith("environment-"):
        return data.get("environment"), None
    return None, None


def audit_row(event: LoggedEvent, scope: tuple[str | None, str | None]) -> tuple:
    stream_id = event.stream_id
    account_id = stream_id[8:] if stream_id.startswith("account-") else None
    return (event.tx, event.position, event.event_id, event.occurred_at, scope[0], scope[1], stream_id,
            account_id, event.version, event.actor, event.type, "failure" if event.type in FAILURES else "success",
            event.correlation_id, event.causation_id, event.data_json)


class AuditTrailSession:

    def __init__(self) -> None:
        self.scopes: dict[str, tuple[str | None, str | None]] = {}
        self.new_scopes: list[tuple[str, str | None, str | None]] = []
        self.rows: list[tuple] = []

    async def load(self, conn: asyncpg.Connection, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        wanted = list({e.stream_id for e in events} - self.scopes.keys())
        if wanted:
            for row in await conn.fetch(by_stream(tables("audit_trail_streams"), "stream_id, environment, integration"),
                                        wanted):
                self.scopes[row["stream_id"]] = (row["environment"], row["integration"])

    def apply(self, event: LoggedEvent) -> None:
        scope = self.scopes.get(event.stream_id)
        if scope is None:
            scope = scope_of_first_event(event)
            self.scopes[event.stream_id] = scope
            self.new_scopes.append((event.stream_id, *scope))
        self.rows.append(audit_row(event, scope))

    async def save(self, conn: asyncpg.Connection, tables: Tables, *, bulk: bool) -> None:
        # A rebuild fills this projection with build_chunk; sessions only ever run live.
        rows, self.rows = self.rows, []
        scopes, self.new_scopes = self.new_scopes, []
        if scopes:
            await conn.executemany(f"INSERT INTO {tables('audit_trail_streams')} VALUES ($1, $2, $3)"
                                   " ON CONFLICT DO NOTHING", scopes)
        if rows:
            await conn.execute(
                f"INSERT INTO {tables('audit_trail')} ({', '.join(COLUMNS)}) SELECT * FROM unnest("
                "$1::xid8[], $2::bigint[], $3::uuid[], $4::timestamptz[], $5::text[], $6::text[], $7::text[],"
                " $8::uuid[], $9::int[], $10::text[], $11::text[], $12::text[], $13::uuid[], $14::uuid[], $15::jsonb[])",
                *(list(column) for column in zip(*rows)),
            )


# A rebuild fills audit_trail inside PostgreSQL, one heap chunk of the log at a time (several at once),
# beside the Python fold of the other projections: one row per event needs no fold, only the same
# rules as audit_row and scope_of_first_event above, written in SQL (the live-equals-rebuild test holds
# them together). Every stream's scope is built before any row: a stream's first event may lie in any
# chunk. $1, $2: the rebuild's end; $3, $4: the chunk's ctid bounds.
_IN_CHUNK = "e.ctid >= $3::tid AND e.ctid < $4::tid AND (e.tx, e.position) <= ($1::xid8, $2::bigint)"
_BUILD_STREAMS = f"""
INSERT INTO {{streams}} (stream_id, environment, integration)
SELECT e.stream_id,
       CASE WHEN e.type = 'AccountConnecting' OR e.stream_id LIKE 'integration-%' OR e.stream_id LIKE 'environment-%'
            THEN e.data::jsonb->>'environment' END,
       CASE WHEN e.type = 'AccountConnecting' THEN e.data::jsonb->>'integration'
            WHEN e.stream_id LIKE 'integration-%' THEN coalesce(e.data::jsonb->>'name', e.data::jsonb->>'integration') END
  FROM events e
 WHERE {_IN_CHUNK} AND e.version = 1
ON CONFLICT (stream_id) DO NOTHING
"""
_BUILD_ROWS = f"""
INSERT INTO {{trail}} ({{columns}})
SELECT e.tx, e.position, e.event_id, e.occurred_at, s.environment, s.integration, e.stream_id,
       CASE WHEN e.stream_id LIKE 'account-%' THEN substr(e.stream_id, 9)::uuid END, e.version, e.actor, e.type,
       CASE WHEN e.type = ANY($5::text[]) THEN 'failure' ELSE 'success' END, e.correlation_id, e.causation_id,
       e.data::jsonb
  FROM events e LEFT JOIN {{streams}} s ON s.stream_id = e.stream_id
 WHERE {_IN_CHUNK}
"""


def inserted(status: str) -> int:
    """The row count of an INSERT's command status ("INSERT 0 <rows>")."""
    return int(status.rsplit(" ", 1)[1])


class AuditTrail:
    name = "audit_trail"
    tables = ("audit_trail", "audit_trail_streams")

    def session(self) -> AuditTrailSession:
        return AuditTrailSession()

    async def build_lookups(self, conn: asyncpg.Connection, tables: Tables, upto: LogPosition,
                            chunk: HeapChunk) -> None:
        """Rebuild only: the scopes named by the streams begun in `chunk` (events up to `upto`)."""
        await conn.execute(_BUILD_STREAMS.format(streams=tables("audit_trail_streams")),
                           upto.tx, upto.position, *chunk.tids())

    async def build_chunk(self, conn: asyncpg.Connection, tables: Tables, upto: LogPosition,
                          chunk: HeapChunk) -> int:
        """Rebuild only, after every chunk's build_lookups: the rows of the events up to `upto` in `chunk`
        (every one of them committed); returns how many."""
        return inserted(await conn.execute(
            _BUILD_ROWS.format(trail=tables("audit_trail"), streams=tables("audit_trail_streams"),
                               columns=", ".join(COLUMNS)),
            upto.tx, upto.position, *chunk.tids(), sorted(FAILURES)))
