"""The database as the service sees it: every migration of every package, in order."""

from events.migrate import Migration, load_migrations

MIGRATION_SOURCES = [
    ("events", "events.migrations"),
    ("service", "service.migrations"),
    ("projections", "projections.migrations"),
]


def all_migrations() -> list[Migration]:
    return load_migrations(MIGRATION_SOURCES)
