"""`migration_health`: per environment and integration, how an imported fleet is doing.

Two tables: each account's status (so "stuck in needs_reauth for more than 7 days" can be asked
with the caller's clock), and event counters. Rates and means are derived at query time.
"""

from datetime import datetime, timedelta
from typing import Any, Sequence

import asyncpg

from projections.framework import Tables, by_stream
from projections.source import LoggedEvent

COUNTERS = ("imported", "refreshes_succeeded", "refreshes_failed", "needs_reauth_entered", "reactivations",
            "auto_reactivations", "reconnect_seconds")
STATUS_BY_EVENT = {"AccountValidated": "active", "ValidationFailed": "validation_error",
                   "PostInstallFailed": "post_install_error", "AccountNeedsReauth": "needs_reauth",
                   "AccountReactivated": "active", "AccountDeleted": "deleted"}
AUTOMATIC_REACTIVATIONS = frozenset({"refresh", "validation"})  # no person had to reconnect anything
STUCK_AFTER = timedelta(days=7)


def counter_deltas(event: LoggedEvent) -> dict[str, int]:
    kind, data = event.type, event.data
    if kind == "AccountConnecting":
        return {"imported": 1}
    if kind == "TokenRefreshed":
        return {"refreshes_succeeded": 1}
    if kind == "TokenRefreshFailed":
        return {"refreshes_failed": 1}
    if kind == "AccountNeedsReauth":
        return {"needs_reauth_entered": 1}
    if kind == "AccountReactivated":
        return {"reactivations": 1, "auto_reactivations": int(data.get("how") in AUTOMATIC_REACTIVATIONS),
                "reconnect_seconds": int(data.get("after_seconds", 0))}
    return {}


class MigrationHealthSession:
    def __init__(self) -> None:
        self.accounts: dict[str, list[Any]] = {}  # stream -> [environment, integration, status, needs_reauth_since]
        self.touched: set[str] = set()
        self.counters: dict[tuple[str, str], dict[str, int]] = {}

    async def load(self, conn: asyncpg.Connection, tables: Tables, events: Sequence[LoggedEvent]) -> None:
        wanted = list({e.stream_id for e in events if e.stream_id.startswith("account-")} - self.accounts.keys())
        if wanted:
            for row in await conn.fetch(by_stream(
                    tables("migration_health_accounts"), "stream_id, environment, integration, status, needs_reauth_since"),
                    wanted):
                self.accounts[row["stream_id"]] = [row["environment"], row["integration"], row["status"],
                                                   row["needs_reauth_since"]]

    def apply(self, event: LoggedEvent) -> None:
        if not event.stream_id.startswith("account-"):
            return
        if event.type == "AccountConnecting":
            self.accounts[event.stream_id] = [event.data["environment"], event.data["integration"], "connecting", None]
        account = self.accounts.get(event.stream_id)
        if account is None:
            return
        status = STATUS_BY_EVENT.get(event.type)
        if status is not None:
            account[2] = status
            if event.type == "AccountNeedsReauth":
                account[3] = datetime.fromisoformat(event.data["since"].replace("Z", "+00:00"))
            elif status != "needs_reauth":
                account[3] = None
        self.touched.add(event.stream_id)
        deltas = counter_deltas(event)
        if deltas:
            counters = self.counters.setdefault((account[0], account[1]), dict.fromkeys(COUNTERS, 0))
            for name, value in deltas.items():
                counters[name] += value

    async def save(self, conn: asyncpg.Connection, tables: Tables, *, bulk: bool) -> None:
        accounts = [(s, *self.accounts[s]) for s in self.touched]
        counters = [(env, integration, *(values[c] for c in COUNTERS)) for (env, integration), values in self.counters.items()]
        self.touched.clear()
        self.counters = {}
        account_columns = ("stream_id", "environment", "integration", "status", "needs_reauth_since")
        if bulk:
            if accounts:
                await conn.copy_records_to_table(tables.name("migration_health_accounts"), records=accounts,
                                                 columns=account_columns)
            if counters:
                await conn.copy_records_to_table(tables.name("migration_health_counters"), records=counters,
                                                 columns=("environment", "integration", *COUNTERS))
            return
        if accounts:
            await conn.execute(
                f"INSERT INTO {tables('migration_health_accounts')} ({', '.join(account_columns)})"
                " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])"
                " ON CONFLICT (stream_id) DO UPDATE SET status = excluded.status,"
                " needs_reauth_since = excluded.needs_reauth_since",
                *(list(column) for column in zip(*accounts)),
            )
        if counters:
            await conn.executemany(
                f"INSERT INTO {tables('migration_health_counters')} (environment, integration, {', '.join(COUNTERS)})"
                f" VALUES ($1, $2, {', '.join(f'${i}' for i in range(3, 3 + len(COUNTERS)))})"
                " ON CONFLICT (environment, integration) DO UPDATE SET "
                + ", ".join(f"{c} = {tables('migration_health_counters')}.{c} + excluded.{c}" for c in COUNTERS),
                counters,
            )


class MigrationHealth:
    name = "migration_health"
    tables = ("migration_health_accounts", "migration_health_counters")

    def session(self) -> MigrationHealthSession:
        return MigrationHealthSession()


async def health_report(conn: asyncpg.Connection, environment: str, now: datetime) -> dict[str, Any]:
    """The figures for one environment, per integration; `now` is the caller's clock."""
    statuses = await conn.fetch(
        "SELECT integration, status, count(*) AS n,"
        " count(*) FILTER (WHERE status = 'needs_reauth' AND needs_reauth_since < $2) AS stuck"
        " FROM migration_health_accounts WHERE environment = $1 GROUP BY integration, status",
        environment, now - STUCK_AFTER)
    counters = {r["integration"]: r for r in await conn.fetch(
        "SELECT * FROM migration_health_counters WHERE environment = $1", environment)}
    integrations: dict[str, dict[str, Any]] = {}
    for name in sorted({r["integration"] for r in statuses} | counters.keys()):
        integrations[name] = {"imported": 0, "active": 0, "needs_reauth": 0, "by_status": {},
                              "stuck_needs_reauth_over_7_days": 0}
    for row in statuses:
        figures = integrations[row["integration"]]
        figures["by_status"][row["status"]] = row["n"]
        figures["stuck_needs_reauth_over_7_days"] += row["stuck"]
        if row["status"] in ("active", "needs_reauth"):
            figures[row["status"]] = row["n"]
    for name, figures in integrations.items():
        c = counters.get(name)
        refreshes = (c["refreshes_succeeded"] + c["refreshes_failed"]) if c else 0
        figures.update(
            imported=c["imported"] if c else 0,
            refreshes_succeeded=c["refreshes_succeeded"] if c else 0,
            refreshes_failed=c["refreshes_failed"] if c else 0,
            refresh_success_rate=round(c["refreshes_succeeded"] / refreshes, 4) if refreshes else None,
            needs_reauth_entered=c["needs_reauth_entered"] if c else 0,
            reactivations=c["reactivations"] if c else 0,
            auto_reactivation_rate=(round(c["auto_reactivations"] / c["needs_reauth_entered"], 4)
                                    if c and c["needs_reauth_entered"] else None),
            mean_time_to_reconnect_seconds=(round(c["reconnect_seconds"] / c["reactivations"], 1)
                                            if c and c["reactivations"] else None),
        )
    return {"environment": environment, "as_of": now.isoformat().replace("+00:00", "Z"), "integrations": integrations}
