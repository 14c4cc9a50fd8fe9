"""Shared set-up for the account benchmarks: a migrated scratch database with a configured
integration and a unit of work, as a running linkledger would have them."""

import contextlib
import json
from typing import AsyncIterator

from events.database import create_pool
from service.bootstrap import bootstrap
from service.crypto.fingerprint import generate_audit_key
from service.crypto.keyring import Keyring
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient
from service.handlers.import_workers import ImportWorkers
from service.handlers.integrations import configure_integration, configure_oauth_client
from service.handlers.uow import UnitOfWork
from service.settings import load_settings


def truto_record(i: int, run: str) -> dict:
    """A Truto-shaped import record, as a caller holds it."""
    return {
        "integration_name": "salesforce", "tenant_id": f"customer_{run}_{i}", "authentication_method": "oauth2",
        "external_ref": f"bench-{run}-{i}",
        "context": {"oauth": {"token": {"access_token": f"00Dxx{i}!AQEAQ-{run}", "refresh_token": f"5Aep861-{i}",
                                        "expires_at": "2026-12-15T14:30:00Z", "token_type": "Bearer",
                                        "scope": "api refresh_token"}},
                    "instance_url": f"https://acme{i}.my.salesforce.com"},
    }


def truto_line(i: int, run: str) -> bytes:
    """The same record as a line of an NDJSON import body."""
    return json.dumps(truto_record(i, run)).encode()


@contextlib.asynccontextmanager
async def account_uow(dsn: str, pool_size: int = 20) -> AsyncIterator[UnitOfWork]:
    settings = load_settings(database_url=dsn, keyring=Keyring.generate("kek-bench"), audit_key=generate_audit_key())
    pool = await create_pool(dsn, min_size=pool_size, max_size=pool_size)
    uow = bootstrap(settings, pool).acting_as("system:bench")
    if settings.import_workers:  # started with the service, as `linkledger serve` does
        uow.shared.import_workers = ImportWorkers(uow.data_keys.keyring, uow.fingerprinter, settings.import_workers)
        await uow.shared.import_workers.start()
    try:
        await configure_integration(ConfigureIntegration(environment="bench", name="salesforce"), uow)
        await configure_oauth_client(ConfigureOAuthClient(
            environment="bench", integration="salesforce", client_id="bench", client_secret="bench-secret",
            token_url="https://login.example.com/token"), uow)
        yield uow
    finally:
        if uow.shared.import_workers:
            await uow.shared.import_workers.close()
        await pool.close()
