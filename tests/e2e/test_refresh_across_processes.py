"""Issue acceptance: 100 concurrent token reads over 3 separate `linkledger serve` processes, for
one account whose token expires in 10 s, against the simulator with rotation and reuse detection:
exactly one refresh at the provider, no invalid_grant, every caller gets the new token."""

import asyncio
import json
import os
import socket
import sys
from pathlib import Path

import aiohttp
import asyncpg

from scripts.simulator import ProviderSimulator
from tests.conftest import gateway_settings

LINKLEDGER = Path(sys.executable).parent / "linkledger"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_ready(url: str, process, timeout: float = 60) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            assert process.returncode is None, f"linkledger serve exited with {process.returncode}"
            try:
                async with session.get(f"{url}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            assert asyncio.get_running_loop().time() < deadline, "linkledger serve did not become ready"
            await asyncio.sleep(0.2)


async def test_100_reads_over_3_serve_processes_refresh_once(gateway, database_url, servers):
    sim = ProviderSimulator(seed=3)
    await sim.start()
    sim.add_client("ll-client", "ll-secret", rotate_refresh_tokens=True, reuse_detection=True)
    sim.set_failures(latency_ms=200)
    processes = []
    try:
        admin = await gateway.headers("admin")
        integration = {"oauth_client": {"client_id": "ll-client", "client_secret": "ll-secret",
                                        "token_url": sim.token_url}}
        assert (await gateway.client.put("/v1/environments/prod/integrations/crm", json=integration,
                                         headers=admin)).status == 200
        grant = sim.issue_grant("ll-client", expires_in=10)
        record = {"integration_name": "crm", "tenant_id": "t-1", "external_ref": "conn-1",
                  "context": {"oauth": {"token": {"access_token": grant["access_token"],
                                                  "refresh_token": grant["refresh_token"], "expires_in": 10}}}}
        imported = await gateway.client.post("/v1/environments/prod/accounts", json=record, headers=admin)
        account_id = (await imported.json())["account"]["id"]
        service = await gateway.headers("service", "prod")

        settings = gateway.settings
        urls = []
        for _ in range(3):
            port = free_port()
            env = {**os.environ, "LINKLEDGER_DATABASE_URL": database_url, "LINKLEDGER_NATS_URL": servers.nats_url,
                   "LINKLEDGER_KEYRING": settings.keyring, "LINKLEDGER_AUDIT_KEY": settings.audit_key,
                   "LINKLEDGER_HTTP_PORT": str(port), "LINKLEDGER_REFRESH_WORKER": "false",
                   "LINKLEDGER_POOL_SIZE": "8", "LINKLEDGER_LOG_LEVEL": "WARNING",
                   # the shared test NATS server holds no LINKLEDGER stream of this test's database
                   "LINKLEDGER_RELAY": "false", "LINKLEDGER_WEBHOOK_DISPATCHER": "false"}
            processes.append(await asyncio.create_subprocess_exec(
                str(LINKLEDGER), "serve", env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE))
            urls.append(f"http://127.0.0.1:{port}")
        for url, process in zip(urls, processes):
            await wait_ready(url, process)

        async with aiohttp.ClientSession() as session:
            async def read(i: int):
                async with session.get(f"{urls[i % 3]}/v1/accounts/{account_id}/token", headers=service) as response:
                    return response.status, await response.json()

            results = await asyncio.gather(*(read(i) for i in range(100)))
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
        for process in processes:
            try:
                await asyncio.wait_for(process.wait(), 30)
            except asyncio.TimeoutError:
                process.kill()
        await sim.stop()

    assert [status for status, _ in results] == [200] * 100, [body for status, body in results if status != 200][:3]
    tokens = {body["access_token"] for _, body in results}
    assert len(tokens) == 1 and grant["access_token"] not in tokens
    assert sim.counter("refresh_requests") == 1
    assert sim.counter("successful_refreshes") == 1
    assert sim.counter("invalid_grant_responses") == 0
    conn = await asyncpg.connect(database_url)
    try:
        refreshed = await conn.fetchval(
            "SELECT count(*) FROM events WHERE stream_id = $1 AND type = 'TokenRefreshed'", f"account-{account_id}")
    finally:
        await conn.close()
    assert refreshed == 1
