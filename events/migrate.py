"""Ordered SQL migrations, recorded in a table, safe when several replicas start at once."""

import hashlib
from dataclasses import dataclass
from importlib import resources

import asyncpg

# Any constant works; it only has to be the same for every linkledger process.
_MIGRATION_LOCK_KEY = 0x6C6C_6D69


@dataclass(frozen=True)
class Migration:
    name: str  # "<source>/<file>", e.g. "events/0001_event_log.sql"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(Exception):
    pass


def load_migrations(sources: list[tuple[str, str]]) -> list[Migration]:
    """`sources` is (label, package holding *.sql files), applied in the order given."""
    found = []
    for label, package in sources:
        files = sorted(
            (f for f in resources.files(package).iterdir() if f.name.endswith(".sql")),
            key=lambda f: f.name,
        )
        found.extend(Migration(f"{label}/{f.name}", f.read_text()) for f in files)
    return found


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Apply what is not applied yet, each migration in its own transaction. Returns their names."""
    applied_now = []
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                 name text PRIMARY KEY,
                 checksum text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {r["name"]: r["checksum"] for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")}
        for migration in migrations:
            if migration.name in done:
                if done[migration.name] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was changed after it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                    migration.name,
                    migration.checksum,
                )
            applied_now.append(migration.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
    return applied_now
