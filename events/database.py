"""Connections to the log's database."""

import asyncpg

from events.migrate import Migration, apply_migrations

APP_ROLE = "linkledger_app"


async def _rollback_if_open(conn: asyncpg.Connection) -> None:
    """Pool reset: linkledger leaves no session state on pooled connections (advisory locks are
    transaction-scoped, LISTEN uses its own connection), so asyncpg's default reset, a second
    round trip on every query, is replaced by a rollback of anything left open."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, *, role: str | None = APP_ROLE, min_size: int = 2, max_size: int = 20) -> asyncpg.Pool:
    """A pool whose sessions act as the application role, which may not UPDATE/DELETE/TRUNCATE events."""
    # The append statements take arrays, for which PostgreSQL keeps choosing custom plans and
    # re-plans every execution (~0.7 ms for the group-commit statement); their generic plans are
    # index lookups whatever the arrays hold, so linkledger plans each statement once.
    settings = {"application_name": "linkledger", "plan_cache_mode": "force_generic_plan"}
    if role:
        settings["role"] = role
    return await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, server_settings=settings, reset=_rollback_if_open
    )


async def migrate(dsn: str, migrations: list[Migration]) -> list[str]:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": "linkledger-migrate"})
    try:
        return await apply_migrations(conn, migrations)
    finally:
        await conn.close()


def database_url_for(dsn: str, database: str) -> str:
    """The same server URL, pointing at another database."""
    base, _, query = dsn.partition("?")
    scheme, _, rest = base.partition("://")
    authority = rest.split("/", 1)[0]
    return f"{scheme}://{authority}/{database}" + (f"?{query}" if query else "")
