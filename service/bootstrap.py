"""Wiring: the real adapters a running linkledger uses."""

from typing import Callable
from datetime import datetime

import asyncpg

from events.store import PostgresEventStore
from service.crypto.datakeys import DataKeys
from service.crypto.fingerprint import Fingerprinter
from service.crypto.keyring import Keyring, KeyringError
from service.handlers.uow import UnitOfWork, system_clock
from service.settings import ConfigError, Settings


def load_keyring(settings: Settings) -> Keyring:
    if not (settings.keyring or settings.keyring_file):
        raise ConfigError("LINKLEDGER_KEYRING or LINKLEDGER_KEYRING_FILE is not set (key-encryption keys; "
                          "`linkledger keys generate` makes a keyring)")
    try:
        return Keyring.load(settings.keyring, settings.keyring_file)
    except (KeyringError, OSError) as exc:
        name = "LINKLEDGER_KEYRING" if settings.keyring else "LINKLEDGER_KEYRING_FILE"
        raise ConfigError(f"{name}: {exc}") from None


def load_fingerprinter(settings: Settings) -> Fingerprinter:
    if not settings.audit_key:
        raise ConfigError("LINKLEDGER_AUDIT_KEY is not set (base64 32-byte key for token fingerprints; "
                          "`linkledger keys generate` makes one)")
    try:
        return Fingerprinter.from_base64(settings.audit_key)
    except ValueError as exc:
        raise ConfigError(f"LINKLEDGER_AUDIT_KEY: {exc}") from None


def bootstrap(settings: Settings, pool: asyncpg.Pool, *, clock: Callable[[], datetime] = system_clock) -> UnitOfWork:
    return UnitOfWork(
        pool=pool,
        store=PostgresEventStore(pool),
        data_keys=DataKeys(pool, load_keyring(settings)),
        fingerprinter=load_fingerprinter(settings),
        clock=clock,
    )
