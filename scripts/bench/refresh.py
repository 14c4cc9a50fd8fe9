"""`linkledger bench refresh`: end-to-end token refreshes per second against the OAuth provider
simulator, which runs in its own process (`SimulatorProcess`) with rotation and reuse detection on.

2,000 accounts are imported whose grants the simulator issued; the integration's OAuth client
points at the simulator. Then 32 concurrent tasks in this process drive `Refresher.refresh` (the
real handler: lease row, provider call, encrypted append of the rotated tokens, fenced by version,
re-scheduling) over the accounts in a cycle, each account in the hands of one task at a time, for
~10 s per round. Ceiling, in the same run and alternating with it: the bare HTTP refresh against
the same simulator (aiohttp POST /token, Basic client auth, keeping each rotated refresh token)
with the same concurrency over grants of another client, no linkledger.

From the simulator's counters for linkledger's client: successful_refreshes (must equal the
refreshes linkledger reported, and the TokenRefreshed events in the database),
invalid_grant_responses (must be 0: no refresh token presented twice or lost),
max_concurrent_refreshes_per_grant (must be 1). Target: >= 500 refreshes/s.

    python -m scripts.bench.refresh [--seconds S] [--rounds R] [--accounts N] [--workers W] [--pool-size P]
"""

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import signal
import sys
import time
import uuid

import aiohttp

from scripts.bench.accounts import account_uow
from scripts.bench.common import median, percentile_ms, result_line, scratch_database, servers
from scripts.bench.token_read import cpu_seconds
from scripts.simulator import SimulatorProcess

TARGET = 500.0  # refreshes/s
LL_CLIENT, LL_SECRET = "bench-linkledger", "bench-linkledger-secret"
RAW_CLIENT, RAW_SECRET = "bench-raw", "bench-raw-secret"


def _record(i: int, run_id: str, grant: dict) -> bytes:
    """A truto-profile import line holding the simulator's tokens for one grant."""
    return json.dumps({
        "integration_name": "salesforce", "tenant_id": f"customer_{run_id}_{i}", "authentication_method": "oauth2",
        "external_ref": f"bench-{run_id}-{i}",
        "context": {"oauth": {"token": {"access_token": grant["access_token"], "refresh_token": grant["refresh_token"],
                                        "expires_at": grant["expires_at"], "token_type": "Bearer",
                                        "scope": grant["scope"]}}},
    }).encode()


async def _cycle(items: list, seconds: float, workers: int, step) -> tuple[int, int, float, list[float]]:
    """`workers` tasks take items from a queue, `await step(item)`, and put them back at the end:
    one task per item at a time, every item in turn. Returns (ok, failed, elapsed, latencies, cpu):
    cpu is this process's CPU seconds meanwhile (less noisy than rates on a shared machine)."""
    queue = collections.deque(items)
    latencies: list[float] = []
    failed = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal failed
        while queue and (started := time.perf_counter()) < deadline:
            item = queue.popleft()
            try:
                ok = await step(item)
            finally:
                queue.append(item)
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failed += 1

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(loop() for _ in range(workers)))
    return len(latencies), failed, time.perf_counter() - started, latencies, time.process_time() - cpu


async def run(seconds: float = 10.0, rounds: int = 2, accounts: int = 2000, workers: int = 32,
              pool_size: int = 20) -> str:
    from service.domain.commands import ConfigureOAuthClient
    from service.handlers.accounts import import_accounts
    from service.handlers.import_profiles import parse_import
    from service.handlers.integrations import configure_oauth_client
    from service.handlers.tokens import Refresher
    from service.oauth.client import OAuthClient

    ll_rates, raw_rates, ll_latencies, raw_latencies = [], [], [], []
    ll_ok = ll_failed = raw_ok = raw_failed = 0
    ll_cpu = raw_cpu = ll_db_cpu = ll_sim_cpu = raw_sim_cpu = 0.0
    errors: collections.Counter = collections.Counter()
    with servers() as (server_dsn, _nats), SimulatorProcess(seed=1) as sim:
        for client_id, secret in ((LL_CLIENT, LL_SECRET), (RAW_CLIENT, RAW_SECRET)):
            sim.add_client(client_id, secret, access_token_ttl=3600, rotate_refresh_tokens=True, reuse_detection=True,
                           auth_methods=["client_secret_basic"])
        token_url = sim.url + "/token"
        print(f"simulator (own process) at {sim.url}: rotation and reuse detection on", flush=True)
        async with scratch_database(server_dsn) as dsn, account_uow(dsn, pool_size=pool_size) as uow:
            await configure_oauth_client(ConfigureOAuthClient(
                environment="bench", integration="salesforce", client_id=LL_CLIENT, client_secret=LL_SECRET,
                token_url=token_url, client_authentication="client_secret_basic"), uow)
            run_id = uuid.uuid4().hex[:6]
            started = time.perf_counter()
            grants = sim.issue_grants(LL_CLIENT, accounts, scopes=["api", "refresh_token"])
            records = parse_import(b"\n".join(_record(i, run_id, g) for i, g in enumerate(grants)),
                                   "application/x-ndjson", environment="bench", profile="truto", now=uow.clock())
            results = await import_accounts(records, uow, profile="truto")
            account_ids = [r.account_id for r in results if r.outcome == "imported"]
            if len(account_ids) != accounts:
                raise RuntimeError(f"imported {len(account_ids)} of {accounts} accounts: "
                                   f"{[r for r in results if r.outcome != 'imported'][:3]}")
            # The ceiling's grants: its own client, so the counters of the two stay apart.
            raw_tokens = {g["grant_id"]: g["refresh_token"] for g in sim.issue_grants(RAW_CLIENT, accounts)}
            print(f"imported {accounts} accounts with simulator grants in {time.perf_counter() - started:.1f} s",
                  flush=True)

            basic = "Basic " + base64.b64encode(f"{RAW_CLIENT}:{RAW_SECRET}".encode()).decode()
            async with aiohttp.ClientSession(headers={"User-Agent": "linkledger"}) as session:
                refresher = Refresher(uow, OAuthClient(session, timeout=10, clock=uow.clock))

                async def refresh_linkledger(account_id: uuid.UUID) -> bool:
                    try:
                        state = await refresher.refresh(account_id)
                    except Exception as exc:  # counted and shown; the run goes on
                        errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                        return False
                    if state.consecutive_refresh_failures or state.status == "needs_reauth":
                        errors[f"refresh recorded as failed: status {state.status}"] += 1
                        return False
                    return True

                async def refresh_raw(grant_id: str) -> bool:
                    form = {"grant_type": "refresh_token", "refresh_token": raw_tokens[grant_id]}
                    try:
                        async with session.post(token_url, data=form, headers={"Authorization": basic}) as response:
                            body = await response.json(content_type=None)
                            if response.status != 200:
                                errors[f"raw: HTTP {response.status} {body.get('error')}"] += 1
                                return False
                    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                        errors[f"raw: {type(exc).__name__}"] += 1
                        return False
                    raw_tokens[grant_id] = body.get("refresh_token") or raw_tokens[grant_id]
                    return True

                async def other_cpu() -> tuple[float, float]:
                    """CPU seconds used so far by this database's PostgreSQL backends (when the server
                    is on this machine) and by the simulator process: the whole cost of a refresh."""
                    pids = await uow.pool.fetch(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
                    return sum(cpu_seconds(r["pid"]) for r in pids), cpu_seconds(sim._proc.pid)

                for round_no in range(rounds):
                    order = [("raw", list(raw_tokens)), ("linkledger", account_ids)]
                    if round_no % 2:
                        order.reverse()
                    for name, items in order:
                        db_before, sim_before = await other_cpu()
                        if name == "raw":
                            ok, failed, elapsed, lat, cpu = await _cycle(items, seconds, workers, refresh_raw)
                            raw_ok, raw_failed, raw_cpu = raw_ok + ok, raw_failed + failed, raw_cpu + cpu
                            raw_sim_cpu += (await other_cpu())[1] - sim_before
                            raw_rates.append(ok / elapsed)
                            raw_latencies.extend(lat)
                        else:
                            ok, failed, elapsed, lat, cpu = await _cycle(items, seconds, workers,
                                                                         refresh_linkledger)
                            ll_ok, ll_failed, ll_cpu = ll_ok + ok, ll_failed + failed, ll_cpu + cpu
                            db_after, sim_after = await other_cpu()
                            ll_db_cpu, ll_sim_cpu = ll_db_cpu + db_after - db_before, ll_sim_cpu + sim_after - sim_before
                            ll_rates.append(ok / elapsed)
                            ll_latencies.extend(lat)
                        print(f"{name:<10} round {round_no + 1}: {ok / elapsed:,.0f} refreshes/s ({ok} in "
                              f"{elapsed:.1f} s, {failed} failed)  p50 {percentile_ms(lat, 0.5)} ms  "
                              f"p99 {percentile_ms(lat, 0.99)} ms  {1000 * cpu / max(ok, 1):.2f} ms CPU each here",
                              flush=True)

            # What the provider saw, and what linkledger persisted.
            counters = sim.counters(include_grants=False)["clients"]
            ll_counters, raw_counters = counters[LL_CLIENT], counters[RAW_CLIENT]
            persisted = await uow.pool.fetchval("SELECT count(*) FROM events WHERE type = 'TokenRefreshed'")
            leases = await uow.pool.fetchval("SELECT count(*) FROM refresh_leases_held")
            refreshed_accounts = await uow.pool.fetchval(
                "SELECT count(DISTINCT stream_id) FROM events WHERE type = 'TokenRefreshed'")

    for message, count in errors.most_common(5):
        print(f"error x{count}: {message}", flush=True)
    checks = {
        "invalid_grant_responses == 0": ll_counters["invalid_grant_responses"] == 0,
        "max_concurrent_refreshes_per_grant == 1": ll_counters["max_concurrent_refreshes_per_grant"] == 1,
        "reuse_detected == 0": ll_counters["reuse_detected"] == 0,
        "provider's successful_refreshes == refreshes linkledger reported": ll_counters["successful_refreshes"] == ll_ok,
        "TokenRefreshed events == refreshes linkledger reported": persisted == ll_ok,
        "no lease left behind": leases == 0,
        "ceiling: invalid_grant_responses == 0": raw_counters["invalid_grant_responses"] == 0,
    }
    for name, ok in checks.items():
        print(f"check {'ok    ' if ok else 'FAILED'} {name}", flush=True)
    value, ceiling = median(ll_rates), median(raw_rates)
    print(f"target >= {TARGET:g} refreshes/s: {'met' if value >= TARGET else 'NOT met'} ({value:,.0f})", flush=True)
    return result_line(
        "refresh", value, "refreshes/s", ceiling,
        p50_ms=percentile_ms(ll_latencies, 0.5), p99_ms=percentile_ms(ll_latencies, 0.99),
        ceiling_p50_ms=percentile_ms(raw_latencies, 0.5), ceiling_p99_ms=percentile_ms(raw_latencies, 0.99),
        target=TARGET, target_met=value >= TARGET,
        cpu_ms_per_refresh=round(1000 * ll_cpu / max(ll_ok, 1), 2),
        ceiling_cpu_ms_per_refresh=round(1000 * raw_cpu / max(raw_ok, 1), 2),
        db_cpu_ms_per_refresh=round(1000 * ll_db_cpu / max(ll_ok, 1), 2),
        simulator_cpu_ms_per_refresh=round(1000 * ll_sim_cpu / max(ll_ok, 1), 2),
        ceiling_simulator_cpu_ms_per_refresh=round(1000 * raw_sim_cpu / max(raw_ok, 1), 2),
        refreshes=ll_ok, failed=ll_failed, ceiling_refreshes=raw_ok, ceiling_failed=raw_failed,
        accounts_refreshed=refreshed_accounts, persisted_refreshes=persisted,
        successful_refreshes=ll_counters["successful_refreshes"],
        invalid_grant_responses=ll_counters["invalid_grant_responses"],
        max_concurrent_refreshes_per_grant=ll_counters["max_concurrent_refreshes_per_grant"],
        reuse_detected=ll_counters["reuse_detected"], checks_passed=all(checks.values()),
        value_rounds=[round(r, 1) for r in ll_rates], ceiling_rounds=[round(r, 1) for r in raw_rates],
        accounts=accounts, workers=workers, pool_size=pool_size, seconds=seconds, rounds=rounds)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="linkledger bench refresh")
    parser.add_argument("--seconds", type=float, default=10.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--pool-size", type=int, default=20, help="PostgreSQL connections (the service's default)")
    args = parser.parse_args(argv)

    async def guarded() -> str:
        # SIGTERM cancels the run like Ctrl-C does: every `finally` stops what it started.
        task = asyncio.current_task()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(seconds=args.seconds, rounds=args.rounds, accounts=args.accounts, workers=args.workers,
                         pool_size=args.pool_size)

    try:
        print(asyncio.run(guarded()), flush=True)
    except asyncio.CancelledError:
        print("stopped", file=sys.stderr)
        sys.exit(143)


if __name__ == "__main__":
    main(sys.argv[1:])
