"""The event catalog: every event type the log may hold, one module per stream family."""

from events.catalog import account, environment, integration  # noqa: F401  (registers the classes)
from events.catalog.base import (
    CatalogError,
    Event,
    Fingerprint,
    Fingerprints,
    Instant,
    JsonObject,
    catalog,
    decode,
    encode,
    event_class,
    register_upcaster,
    schemas,
)

__all__ = [
    "CatalogError",
    "Event",
    "Fingerprint",
    "Fingerprints",
    "Instant",
    "JsonObject",
    "catalog",
    "decode",
    "encode",
    "event_class",
    "register_upcaster",
    "schemas",
]
