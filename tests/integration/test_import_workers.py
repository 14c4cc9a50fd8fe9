"""Bulk imports prepared by import worker processes write what the serving process would have
written itself: the same results per line, tokens that decrypt under each account's own key,
chains that verify, bad records rejected by line."""

import asyncio
import contextlib
import json
import os
import signal
import uuid

import pytest

from events.database import create_pool
from service.bootstrap import bootstrap
from service.domain.commands import ConfigureIntegration
from service.handlers.accounts import current_credentials, import_accounts
from service.handlers.import_profiles import parse_import
from service.handlers.import_workers import ImportWorkers
from service.handlers.integrations import configure_integration
from tests.conftest import gateway_settings


def _lines(environment_tag: str, count: int) -> bytes:
    lines = []
    for i in range(count):
        record = {
            "integration_name": "crm", "tenant_id": f"t{i}", "authentication_method": "oauth2", "external_ref": f"ref-{i}",
            "context": {"oauth": {"token": {"access_token": f"at-{environment_tag}-{i}", "refresh_token": f"rt-{i}",
                                            "expires_in": 3600}}, "instance_url": f"https://t{i}.example.com"},
        }
        if i == 7:
            del record["context"]["oauth"]["token"]["refresh_token"]
        if i == 800:
            record["integration_name"] = "nowhere"
        lines.append(json.dumps(record))
    return "\n".join(lines).encode()


async def _import(uow, environment: str, count: int):
    return await import_accounts(parse_import(_lines(environment, count), "application/x-ndjson",
                                              environment=environment, profile="truto", now=uow.clock()),
                                 uow, profile="truto")


@pytest.fixture
async def uow(database_url, servers):
    settings = gateway_settings(database_url, servers.nats_url)
    pool = await create_pool(database_url, max_size=10)
    uow = bootstrap(settings, pool).acting_as("system:test")
    for environment in ("here", "workers"):
        await configure_integration(ConfigureIntegration(environment=environment, name="crm"), uow)
    yield uow
    await pool.close()


async def test_workers_prepare_what_the_serving_process_would(uow):
    import gc

    count = 1200  # five chunks of 250 (the last of 200): shared out to the workers
    records = parse_import(_lines("here", count), "application/x-ndjson", environment="here", profile="truto",
                           now=uow.clock())
    collections = []
    gc.callbacks.append(collect := lambda phase, info: collections.append(phase))
    try:
        local = await import_accounts(records, uow, profile="truto")
    finally:
        gc.callbacks.remove(collect)
    # The collector paused for the import (without, hundreds of passes), and ran at once after.
    assert collections.count("start") <= 1 and gc.isenabled()
    workers = ImportWorkers(uow.data_keys.keyring, uow.fingerprinter, 2)
    await workers.start()
    jobs = []
    prepare = workers.prepare

    async def counted(*args):
        jobs.append(len(args[1]))
        return await prepare(*args)

    workers.prepare = counted
    uow.shared.import_workers = workers
    try:
        run = uow.acting_as("system:test", correlation_id=uuid.uuid4())
        remote = await import_accounts(parse_import(_lines("workers", count), "application/x-ndjson", environment="workers",
                                                    profile="truto", now=uow.clock()), run, profile="truto")
    finally:
        uow.shared.import_workers = None
        await workers.close()
    assert sum(jobs) == count - 1 and len(jobs) == 5  # one record failed parsing, before any worker
    assert [(r.line, r.outcome, r.field, r.status) for r in remote] == [(r.line, r.outcome, r.field, r.status) for r in local]
    outcomes = [r.outcome for r in remote]
    assert outcomes.count("imported") == count - 2 and outcomes.count("rejected") == 2
    assert remote[800].field == "integration_name"
    for result in remote[::97]:
        if result.outcome == "imported":
            secrets = await current_credentials(uow, result.account_id)
            assert secrets["access_token"] == f"at-workers-{result.line - 1}"
    actors = await uow.pool.fetch(
        "SELECT DISTINCT actor, correlation_id FROM events e JOIN stream_heads h USING (stream_id)"
        " WHERE h.snapshot->>'environment' = 'workers' AND stream_id LIKE 'account-%'")
    assert [(a["actor"], a["correlation_id"]) for a in actors] == [("system:test", run.correlation_id)]
    from events.integrity import verify_log

    async with uow.pool.acquire() as conn:
        report = await verify_log(conn)
    assert report.ok, report.as_dict()


@contextlib.asynccontextmanager
async def _serving(uow, processes: int):
    workers = ImportWorkers(uow.data_keys.keyring, uow.fingerprinter, processes)
    await workers.start()
    uow.shared.import_workers = workers
    try:
        yield workers
    finally:
        uow.shared.import_workers = None
        await workers.close()


async def _imports_all_but_the_two_bad_records(uow, environment: str, count: int):
    results = await _import(uow, environment, count)
    assert [r.outcome for r in results].count("imported") == count - 2
    return results


async def test_a_worker_that_dies_costs_no_import(uow):
    async with _serving(uow, 2) as workers:
        for pid in workers.pids:  # as the kernel's OOM killer would
            os.kill(pid, signal.SIGKILL)
        first = await _imports_all_but_the_two_bad_records(uow, "workers", 1200)
        await _imports_all_but_the_two_bad_records(uow, "here", 1200)
    assert (await current_credentials(uow, first[5].account_id))["access_token"] == "at-workers-5"


async def test_a_worker_killed_while_preparing_hands_its_chunks_back_and_is_replaced(uow):
    async with _serving(uow, 1) as workers:
        [first_pid] = workers.pids

        async def kill_soon() -> None:
            await asyncio.sleep(0.2)  # while the worker holds chunks
            os.kill(first_pid, signal.SIGKILL)

        killer = asyncio.create_task(kill_soon())
        results = await _imports_all_but_the_two_bad_records(uow, "workers", 2400)
        await killer
        for _ in range(200):  # a new worker takes the dead one's place
            if workers.pids != [first_pid] and workers._workers[0].ready:
                break
            await asyncio.sleep(0.05)
        assert workers.pids != [first_pid] and workers._workers[0].ready
        await _imports_all_but_the_two_bad_records(uow, "here", 1200)
    assert (await current_credentials(uow, results[2000].account_id))["access_token"] == "at-workers-2000"
