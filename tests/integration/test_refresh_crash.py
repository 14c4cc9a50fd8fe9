"""Crash safety of the proactive refresh: worker processes SIGKILLed at random moments while they
refresh rotating tokens, then one clean worker finishes.

The provider simulator runs in the test process, on the same accelerated clock as the workers, and
records every token answer that carried a new refresh token: which process asked (each worker's
User-Agent names it), when the request arrived and when the answer was ready (wall time). With
that record and the event log, every refresh token the provider ever issued is accounted for:
either it is persisted in exactly one event of its account, or it was issued to a worker that was
killed while that refresh was in flight (request sent before the SIGKILL). The latter is inherent:
the provider rotated, the process died before appending, the rotated token exists nowhere else, so
the next refresh presents the rotated-out token and reuse detection revokes the grant. The test
counts those losses and requires every revoked grant to be one of them.
"""

import asyncio
import collections
import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import aiohttp
import asyncpg
from aiohttp import web

from events.database import create_pool
from events.integrity import verify_log
from scripts.bench.schedule import WorkerProcess, worker_env
from scripts.simulator import ProviderSimulator
from service.bootstrap import bootstrap
from service.clock import accelerated_clock
from service.crypto.envelope import decrypt, event_aad
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient, Credentials, ImportAccount
from service.domain.identity import account_stream
from service.handlers.accounts import current_credentials, import_accounts, load_existing_account
from service.handlers.import_profiles import ParsedRecord
from service.handlers.integrations import configure_integration, configure_oauth_client
from service.handlers.tokens import LEASE_SECONDS, Refresher
from service.oauth.client import OAuthClient
from tests.conftest import gateway_settings

RATE = 10.0  # accelerated clock: the 120 s claim is 12 wall s (leases run in real time)
ACCOUNTS = 200
SHORT_TTL = 200  # accelerated s: a refreshed account is due again 20-140 s (2-14 wall s) later
LONG_TTL = 30 * 86400  # in the clean phase: each account is refreshed once more, then not for long
KILL_ROUNDS = 6
KILL_DELIVERY_SLACK = 0.5  # wall s: a request sent just before a SIGKILL may be read this much after it
CLIENT, SECRET = "ll-client", "ll-secret"


@dataclass(frozen=True)
class Answer:
    """A /token answer that carried a new refresh token."""

    asked_at: float  # wall time the request reached the provider
    answered_at: float  # wall time the answer was ready (the rotation had happened)
    asker: str  # the User-Agent: linkledger-worker-N, or the test's own client
    grant_id: str
    refresh_token: str


class RecordingSimulator(ProviderSimulator):
    """The provider simulator, plus a record of every answer that issued a refresh token."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.answers: list[Answer] = []

    def create_app(self) -> web.Application:
        app = super().create_app()

        @web.middleware
        async def record(request: web.Request, handler):
            asked_at = time.time()
            response = await handler(request)
            if request.path == "/token" and response.status == 200 and isinstance(response, web.Response):
                token = json.loads(response.body).get("refresh_token")
                if token:
                    self.answers.append(Answer(asked_at, time.time(), request.headers.get("User-Agent", ""),
                                               self.grant_of(token), token))
            return response

        app.middlewares.append(record)
        return app


def current_refresh_token(sim: ProviderSimulator, grant_id: str) -> str:
    """The grant's current refresh token, as the provider holds it. grant_info() does not say
    (yet); the simulator's own state does."""
    info = sim.grant_info(grant_id)
    if "refresh_token" in info:
        return info["refresh_token"]
    return sim._grants[grant_id].refresh_token.value


async def persisted_refresh_tokens(uow, pool, account_id) -> list[str]:
    """The refresh token of every event of the account that carries secrets, in stream order."""
    stream = account_stream(account_id)
    key = await uow.data_keys.get(stream)
    rows = await pool.fetch("SELECT event_id, secret FROM events WHERE stream_id = $1 AND secret IS NOT NULL"
                            " ORDER BY version", stream)
    return [decrypt(key.key, bytes(r["secret"]), event_aad(stream, r["event_id"])).get("refresh_token") for r in rows]


async def test_workers_killed_mid_refresh_lose_nothing_but_what_was_in_flight(database_url, servers, tmp_path):
    rng = random.Random(20240611)
    epoch = time.time()
    clock = accelerated_clock(epoch, RATE)
    sim = RecordingSimulator(clock=lambda: clock().timestamp(), seed=11)
    await sim.start()
    sim.add_client(CLIENT, SECRET, access_token_ttl=SHORT_TTL, rotate_refresh_tokens=True, reuse_detection=True)
    settings = gateway_settings(database_url, servers.nats_url)
    pool = await create_pool(database_url, max_size=16)
    session = aiohttp.ClientSession(headers={"User-Agent": "linkledger-test"})
    env = worker_env(database_url=database_url, keyring=settings.keyring, audit_key=settings.audit_key,
                     epoch=epoch, rate=RATE, pool_size=10)
    workers: list[WorkerProcess] = []
    serial = iter(range(1, 1000))

    async def spawn() -> WorkerProcess:
        worker = WorkerProcess(f"worker-{next(serial)}", env, idle_seconds=1.0 / RATE, log_dir=tmp_path)
        workers.append(worker)
        return await worker.start()

    def logs() -> str:
        return "\n".join(f"--- {w.name} (killed at {w.killed_at})\n{w.log_tail(15)}" for w in workers)

    try:
        uow = bootstrap(settings, pool, clock=clock).acting_as("system:test")
        await configure_integration(ConfigureIntegration(environment="prod", name="crm"), uow)
        await configure_oauth_client(ConfigureOAuthClient(
            environment="prod", integration="crm", client_id=CLIENT, client_secret=SECRET,
            token_url=sim.token_url), uow)

        # ---- 200 accounts with rotating refresh tokens, all due now (expiry 60 s away, due 60-180 s before it)
        grants = [sim.issue_grant(CLIENT, subject=f"user-{i}", expires_in=60) for i in range(ACCOUNTS)]
        results = await import_accounts([ParsedRecord(i + 1, ImportAccount(
            environment="prod", integration="crm", tenant_id=f"t-{i}", external_ref=f"crash-{i}", token_type="Bearer",
            expires_at=clock() + timedelta(seconds=60),
            credentials=Credentials(access_token=g["access_token"], refresh_token=g["refresh_token"])), None)
            for i, g in enumerate(grants)], uow)
        assert [r.outcome for r in results] == ["imported"] * ACCOUNTS
        grant_of = {r.account_id: grants[r.line - 1]["grant_id"] for r in results}
        initial = {grants[r.line - 1]["grant_id"]: grants[r.line - 1]["refresh_token"] for r in results}

        # ---- kill phase: two workers refreshing against a slowish provider, SIGKILLed at random moments
        sim.set_failures(latency_ms=(50, 250))  # keeps refreshes in flight at any moment
        await asyncio.gather(spawn(), spawn())
        kills = 0
        for _ in range(KILL_ROUNDS):
            live = [w for w in workers if w.alive]
            if len(live) < 2:
                live += await asyncio.gather(*(spawn() for _ in range(2 - len(live))))
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            for victim in rng.choice([[live[0]], [live[1]], live]):
                await victim.kill()
                kills += 1
        survivors = [w for w in workers if w.alive]
        for worker in survivors:
            await worker.kill()
            kills += 1
        rotations_while_killing = len(sim.answers)
        assert rotations_while_killing > 0, f"the workers refreshed nothing while being killed\n{logs()}"

        # ---- clean phase: one worker, no latency, long-lived tokens; done when nothing is due soon
        # (rows claimed by the dead workers come back 120 s after their claim) and no lease is held
        # (a dead worker's lease runs out after LEASE_SECONDS of real time)
        sim.reset_failures()
        sim.add_client(CLIENT, SECRET, access_token_ttl=LONG_TTL, rotate_refresh_tokens=True, reuse_detection=True)
        clean = await spawn()
        deadline = time.time() + LEASE_SECONDS + 25
        while True:
            pending = await pool.fetchval("SELECT count(*) FROM refresh_schedule WHERE due_at < $1",
                                          clock() + timedelta(seconds=3600))
            leases = await pool.fetchval("SELECT count(*) FROM refresh_leases_held")
            if pending == 0 and leases == 0:
                break
            assert clean.alive, logs()
            assert time.time() < deadline, f"{pending} accounts still due soon, {leases} leases held\n{logs()}"
            await asyncio.sleep(0.25)
        await clean.stop()
        assert clean.proc.returncode == 0, logs()

        # ---- no half-written change: every chain verifies, every head is its stream's last event
        owner = await asyncpg.connect(database_url)
        try:
            report = await verify_log(owner)
            assert report.ok, report.problems[:5]
            stale_heads = await owner.fetch(
                "SELECT h.stream_id, h.version, e.last FROM stream_heads h"
                " LEFT JOIN (SELECT stream_id, max(version) AS last FROM events GROUP BY stream_id) e USING (stream_id)"
                " WHERE e.last IS DISTINCT FROM h.version")
            assert not stale_heads, stale_heads[:5]
        finally:
            await owner.close()

        # ---- every refresh token the provider issued is persisted once, or was lost at a kill
        killed_at = {f"linkledger-{w.name}": w.killed_at for w in workers if w.killed_at is not None}
        issued = collections.defaultdict(list)
        for answer in sim.answers:
            issued[answer.grant_id].append(answer)
        revoked, lost, lost_gaps = set(), [], []
        for account_id, grant_id in grant_of.items():
            persisted = await persisted_refresh_tokens(uow, pool, account_id)
            assert persisted[0] == initial[grant_id]
            duplicates = [t for t, n in collections.Counter(persisted).items() if n > 1]
            assert not duplicates, f"account {account_id}: a refresh token persisted twice (a refresh appended twice)"
            by_token = {a.refresh_token: a for a in issued[grant_id]}
            assert set(persisted[1:]) <= set(by_token), f"account {account_id}: a persisted token the provider never issued"
            for token, answer in by_token.items():
                if token in persisted:
                    continue
                lost.append((account_id, answer))
                death = killed_at.get(answer.asker)
                assert death is not None, (
                    f"account {account_id}: a rotated refresh token answered to {answer.asker}, which was never "
                    f"killed, is persisted nowhere\n{logs()}")
                # killed_at is taken just before the signal is sent, and the simulator shares this test's
                # event loop: a request the worker sent in its last instants is read a moment after
                # killed_at. A dead worker asks nothing, so anything later than that is a fault.
                assert answer.asked_at < death + KILL_DELIVERY_SLACK, (
                    f"account {account_id}: {answer.asker} asked {answer.asked_at - death:.3f} s after its SIGKILL")
                lost_gaps.append(death - answer.answered_at)
            info = sim.grant_info(grant_id)
            newest = (await current_credentials(uow, account_id))["refresh_token"]
            assert newest == persisted[-1]
            if info["revoked"]:
                revoked.add(grant_id)
                state = await load_existing_account(uow, account_id)
                assert state.status == "needs_reauth" and state.status_reason == "invalid_grant", state.status
            else:
                assert newest == current_refresh_token(sim, grant_id), (
                    f"account {account_id}: the newest persisted refresh token is not the provider's current one")
        lost_grants = {answer.grant_id for _, answer in lost}
        # A lost rotation leaves a rotated-out token persisted: its next refresh is a reuse. And a
        # revocation without a lost rotation would be two refreshes of one grant racing.
        assert revoked == lost_grants, (sorted(revoked - lost_grants), sorted(lost_grants - revoked))
        totals = sim.counters(include_grants=False)["total"]
        assert totals["reuse_detected"] == totals["grants_revoked"] == len(revoked)
        assert totals["max_concurrent_refreshes_per_grant"] == 1, "two refreshes of one grant were in flight at once"
        # A worker appends within moments of the answer; an answer long before the kill that never
        # made it into the log would be a loss no kill explains.
        assert all(gap < 5.0 for gap in lost_gaps), sorted(lost_gaps)[-3:]

        # ---- every account whose grant lives can still be refreshed, from this process
        refresher = Refresher(uow, OAuthClient(session, timeout=10, clock=clock))
        alive = [(a, g) for a, g in grant_of.items() if g not in revoked]
        before = {g: sim.grant_counters(g)["successful_refreshes"] for _, g in alive}
        gate = asyncio.Semaphore(16)

        async def refresh(account_id):
            async with gate:
                return await refresher.refresh(account_id)

        states = await asyncio.gather(*(refresh(a) for a, _ in alive))
        assert [s.status for s in states] == ["active"] * len(alive)
        for (account_id, grant_id), state in zip(alive, states):
            assert sim.grant_counters(grant_id)["successful_refreshes"] == before[grant_id] + 1
            assert (await current_credentials(uow, account_id))["refresh_token"] == current_refresh_token(sim, grant_id)
        assert sim.counters(include_grants=False)["total"]["reuse_detected"] == len(revoked)

        print(f"\ncrash test: {kills} SIGKILLs of {len(killed_at)} worker processes; {rotations_while_killing} "
              f"rotations while killing, {len(sim.answers)} in all; {len(lost)} rotated tokens lost in flight at a kill "
              f"(answered {max(lost_gaps, default=0):.2f} s at most before the kill); {len(revoked)} of {ACCOUNTS} grants "
              f"revoked by reuse detection, all of them those; {len(alive)} refreshed again afterwards")
    finally:
        for worker in workers:
            await worker.kill()
        await session.close()
        await pool.close()
        await sim.stop()
