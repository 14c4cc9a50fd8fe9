"""`linkledger bench schedule`: N accounts (default 10,000) whose access tokens all expire at the
same instant T, refreshed by two separate worker processes on an accelerated clock.

What it checks, from the events table and the provider simulator's counters:

* every account is refreshed before T (the value: refreshed-before-expiry / N);
* the proactive schedule spreads the load: in every 5-second bucket (accelerated time) of the
  refresh window [T-180 s, T-60 s) the refresh count stays <= 2x the window's mean per bucket
  (reported as peak_to_mean);
* both worker processes did part of the work: each worker process acts as its own actor
  (`system:worker-N`, via UnitOfWork.acting_as), and every event records its actor, so the
  TokenRefreshed events are counted per process (the Refresher's lease `holder` is not recorded
  in any event and the lease row is taken over by the next refresh, so it cannot serve);
* no account is refreshed twice: exactly one TokenRefreshed per account stream, and the
  simulator's per-grant successful refresh count is 1 for every grant.

Time. Every process builds the same `service.clock.accelerated_clock(epoch, rate)`; the simulator
gets the same formula in Unix seconds, so token lifetimes agree everywhere. The import runs first,
on the real clock, with expires_at = T far ahead; only then is the epoch chosen, so that
accelerated "now" reaches T-180 s (the first due moment) a few wall seconds after the workers have
started, however long the import took. The workers' idle poll is 1 s of *accelerated* time
(production's 1 s), i.e. 1/rate wall seconds.

The window is 120 s of accelerated time: 120/rate wall seconds, so N accounts need
N * rate / 120 refreshes per wall second. Two worker processes sustain about 100 refreshes/s on a
2-core machine shared with PostgreSQL and the simulator (each refresh is ~11 database round trips
and ~4 ms of Python), so the default is 10,000 accounts at rate 1.1 (92/s; about 2.5 minutes in
all). Faster rates need fewer accounts (e.g. --accounts 600 --rate 20). Past what the workers
sustain, refreshes queue behind their due moments (lag_p50_s/lag_p99_s grow) and the buckets
measure the workers' throughput rather than the schedule; the claim (120 s) and lease (30 s)
periods are accelerated time too, and at high rates shrink below what a batch of refreshes takes
in wall time. At rates of 10 and more a 5-second bucket is shorter than one claim-and-refresh
round of a worker, so peak_to_mean also shows the workers' batching. `seconds` is the wall time
from starting the workers until every account was refreshed.

    linkledger bench schedule [--accounts N] [--rate R] [--timeout S]

A worker process (used by this benchmark and by tests/integration/test_refresh_crash.py):

    python -m scripts.bench.schedule --worker NAME [--idle-seconds S]

reads LINKLEDGER_* settings (database, keyring, audit key, clock epoch/rate) from the environment,
runs `run_refresh_worker` with a Refresher acting as `system:NAME` (User-Agent `linkledger-NAME`,
lease holder `NAME-<pid>`), prints {"event": "ready", ...} once connected, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
WINDOW = (180.0, 60.0)  # due between 180 s and 60 s before expiry (service.handlers.accounts.schedule_accounts)
BUCKET_SECONDS = 5.0


# ----------------------------------------------------------------------------------------- clocks


def epoch_for(rate: float, *, at_wall: float, show: datetime) -> float:
    """The epoch E for which accelerated_clock(E, rate) shows `show` at wall time `at_wall`.

    accelerated(t) = E + (t - E) * rate, so E = (at_wall * rate - show) / (rate - 1)."""
    if rate <= 1.0:
        raise ValueError("the accelerated clock needs a rate above 1")
    return (at_wall * rate - show.timestamp()) / (rate - 1.0)


def unix_clock(epoch: float, rate: float) -> Callable[[], float]:
    """The same time as service.clock.accelerated_clock(epoch, rate), in Unix seconds (the simulator's unit)."""
    from service.clock import accelerated_clock

    clock = accelerated_clock(epoch, rate)
    return lambda: clock().timestamp()


class SwitchableClock:
    """Unix seconds for the simulator: real time until `accelerate()` is called."""

    def __init__(self) -> None:
        self._clock: Callable[[], float] = time.time

    def accelerate(self, epoch: float, rate: float) -> None:
        self._clock = unix_clock(epoch, rate)

    def __call__(self) -> float:
        return self._clock()


# ----------------------------------------------------------------------------------------- worker processes


def worker_env(*, database_url: str, keyring: str, audit_key: str, epoch: float, rate: float,
               pool_size: int = 12, log_level: str = "WARNING", **extra: str) -> dict[str, str]:
    """The environment of a worker process: the same database, keys and clock as its siblings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKLEDGER_")}
    env.update({
        "LINKLEDGER_DATABASE_URL": database_url, "LINKLEDGER_KEYRING": keyring, "LINKLEDGER_AUDIT_KEY": audit_key,
        "LINKLEDGER_CLOCK_EPOCH": repr(epoch), "LINKLEDGER_CLOCK_RATE": repr(rate),
        "LINKLEDGER_REFRESH_WORKER": "true", "LINKLEDGER_POOL_SIZE": str(pool_size), "LINKLEDGER_LOG_LEVEL": log_level,
        "PYTHONPATH": str(ROOT) + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else ""),
    })
    env.update(extra)
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """One `python -m scripts.bench.schedule --worker NAME` child, started and awaited asynchronously
    (the caller's event loop may be serving the provider simulator meanwhile)."""

    def __init__(self, name: str, env: dict[str, str], *, idle_seconds: float, log_dir: Path) -> None:
        self.name = name
        self._env = env
        self._idle = idle_seconds
        self.log_path = log_dir / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_at: float | None = None
        self.killed_at: float | None = None  # wall time of the SIGKILL

    async def start(self, timeout: float = 30.0) -> "WorkerProcess":
        log = open(self.log_path, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "scripts.bench.schedule", "--worker", self.name, "--idle-seconds", repr(self._idle),
                stdout=asyncio.subprocess.PIPE, stderr=log, env=self._env, cwd=str(ROOT), preexec_fn=_die_with_parent)
        finally:
            log.close()
        try:
            while True:
                line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
                if not line:
                    raise RuntimeError(f"worker {self.name} exited before it was ready:\n{self.log_tail()}")
                with contextlib.suppress(ValueError):
                    if json.loads(line).get("event") == "ready":
                        break
        except BaseException:
            await self.kill()
            raise
        self.ready_at = time.time()
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind in the child."""
        if self.alive:
            self.killed_at = time.time()
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        if self.proc is not None:
            await self.proc.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the worker stops its loop), SIGKILL if it does not exit in time."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except asyncio.TimeoutError:
                await self.kill()
        elif self.proc is not None:
            await self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


async def _worker_main(name: str, idle_seconds: float) -> None:
    import aiohttp

    from events.database import create_pool
    from service.bootstrap import bootstrap
    from service.clock import clock_from_settings
    from service.handlers.tokens import Refresher
    from service.oauth.client import OAuthClient
    from service.settings import load_settings
    from service.workers.refresher import run_refresh_worker

    settings = load_settings(require=("database_url",))
    logging.basicConfig(level=settings.log_level, format=f"%(asctime)s %(levelname)s {name} %(name)s %(message)s",
                        stream=sys.stderr)
    pool = await create_pool(settings.database_url, role=settings.database_role or None,
                             min_size=2, max_size=settings.pool_size)
    session = aiohttp.ClientSession(headers={"User-Agent": f"linkledger-{name}"})
    try:
        uow = bootstrap(settings, pool, clock=clock_from_settings(settings)).acting_as(f"system:{name}")
        refresher = Refresher(uow, OAuthClient(session, timeout=settings.oauth_timeout_seconds, clock=uow.clock),
                              holder=f"{name}-{os.getpid()}")
        task = asyncio.create_task(run_refresh_worker(refresher, idle_seconds=idle_seconds))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        print(json.dumps({"event": "ready", "worker": name, "pid": os.getpid(), "holder": refresher.holder}), flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await session.close()
        await pool.close()


# ----------------------------------------------------------------------------------------- the benchmark


async def _setup(dsn: str, token_url: str):
    """Settings (with their keys, which the workers need too) and a unit of work on the real clock,
    with an integration whose OAuth client is the simulator's."""
    from events.database import create_pool
    from service.bootstrap import bootstrap
    from service.crypto.fingerprint import generate_audit_key
    from service.crypto.keyring import Keyring
    from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient
    from service.handlers.integrations import configure_integration, configure_oauth_client
    from service.settings import load_settings

    settings = load_settings(database_url=dsn, keyring=Keyring.generate("kek-bench"), audit_key=generate_audit_key())
    pool = await create_pool(dsn, min_size=4, max_size=16)
    uow = bootstrap(settings, pool).acting_as("system:bench")
    await configure_integration(ConfigureIntegration(environment="bench", name="salesforce"), uow)
    await configure_oauth_client(ConfigureOAuthClient(
        environment="bench", integration="salesforce", client_id="bench", client_secret="bench-secret",
        token_url=token_url), uow)
    return settings, pool, uow


def bucket_counts(times: list[datetime], start: datetime, end: datetime, width: float = BUCKET_SECONDS) -> list[int]:
    """Counts per `width`-second bucket of [start, end) (times outside are ignored)."""
    n = int(round((end - start).total_seconds() / width))
    counts = [0] * n
    for t in times:
        offset = (t - start).total_seconds()
        if 0 <= offset < n * width:
            counts[int(offset // width)] += 1
    return counts


async def run(accounts: int, rate: float, timeout: float | None, workers: int = 2, seed: int = 1) -> str:
    from scripts.bench.common import result_line, scratch_database, servers
    from scripts.simulator import ProviderSimulator
    from service.domain.commands import Credentials, ImportAccount
    from service.handlers.accounts import import_accounts
    from service.handlers.import_profiles import ParsedRecord

    run_id = uuid.uuid4().hex[:6]
    sim_clock = SwitchableClock()
    sim = ProviderSimulator(clock=sim_clock, seed=seed, token_history=4)
    token_url = (await sim.start()) + "/token"
    # A long access-token lifetime: each account is due once in this run, never again.
    sim.add_client("bench", "bench-secret", access_token_ttl=30 * 86400, rotate_refresh_tokens=True,
                   reuse_detection=True)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"linkledger-bench-schedule-{run_id}"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs: list[WorkerProcess] = []
    try:
        with servers() as (server_dsn, _nats):
            async with scratch_database(server_dsn) as dsn:
                settings, pool, uow = await _setup(dsn, token_url)
                try:
                    # ---- the accounts: N grants, imported in bulk with expires_at = T
                    expiry = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(hours=2)
                    grants = [sim.issue_grant("bench", subject=f"user-{i}", expires_in=7200) for i in range(accounts)]
                    records = [ParsedRecord(i + 1, ImportAccount(
                        environment="bench", integration="salesforce", tenant_id=f"tenant-{run_id}-{i}",
                        external_ref=f"schedule-{run_id}-{i}", token_type="Bearer", expires_at=expiry,
                        credentials=Credentials(access_token=g["access_token"], refresh_token=g["refresh_token"]),
                        source="import:canonical"), None) for i, g in enumerate(grants)]
                    started = time.perf_counter()
                    results = []
                    for start in range(0, len(records), 1000):
                        results.extend(await import_accounts(records[start:start + 1000], uow))
                    import_seconds = time.perf_counter() - started
                    imported = [r for r in results if r.outcome == "imported"]
                    if len(imported) != accounts:
                        raise RuntimeError(f"imported {len(imported)} of {accounts}: "
                                           f"{[r.as_dict() for r in results if r.outcome != 'imported'][:3]}")
                    grant_of = {str(r.account_id): grants[r.line - 1]["grant_id"] for r in imported}
                    due_at = {f"account-{r['account_id']}": r["due_at"]
                              for r in await pool.fetch("SELECT account_id, due_at FROM refresh_schedule")}
                    due = await pool.fetchrow("SELECT count(*) AS n, min(due_at) AS first, max(due_at) AS last"
                                              " FROM refresh_schedule")
                    print(f"imported {accounts} accounts in {import_seconds:.1f} s; all expire at {expiry:%H:%M:%S}"
                          f" (T); due from T-{(expiry - due['first']).total_seconds():.0f} s"
                          f" to T-{(expiry - due['last']).total_seconds():.0f} s", flush=True)

                    # ---- the accelerated timeline: T-180 s a few wall seconds from now
                    lead = 5.0  # wall seconds for the workers to start before the first account is due
                    epoch = epoch_for(rate, at_wall=time.time() + lead, show=expiry - timedelta(seconds=WINDOW[0]))
                    sim_clock.accelerate(epoch, rate)
                    env = worker_env(database_url=dsn, keyring=settings.keyring, audit_key=settings.audit_key,
                                     epoch=epoch, rate=rate)
                    procs = [WorkerProcess(f"worker-{n + 1}", env, idle_seconds=1.0 / rate, log_dir=log_dir)
                             for n in range(workers)]
                    phase_started = time.time()
                    await asyncio.gather(*(p.start() for p in procs))
                    now_accel = datetime.fromtimestamp(sim_clock(), timezone.utc)
                    to_expiry_wall = (expiry - now_accel).total_seconds() / rate
                    print(f"{workers} worker processes ready; clock rate {rate:g}: the 120 s window takes"
                          f" {120 / rate:.1f} wall s, T is {to_expiry_wall:.1f} wall s away", flush=True)
                    deadline = time.time() + (timeout if timeout is not None else to_expiry_wall + 60.0)
                    done, last_report = 0, 0.0
                    while time.time() < deadline:
                        done = await pool.fetchval(
                            "SELECT count(DISTINCT stream_id) FROM events WHERE type = 'TokenRefreshed'")
                        if done >= accounts or any(not p.alive for p in procs):
                            break
                        if time.time() - last_report > 5:
                            last_report = time.time()
                            late = (datetime.fromtimestamp(sim_clock(), timezone.utc) - expiry).total_seconds()
                            print(f"  {done} refreshed; accelerated time T{late:+.0f} s", flush=True)
                        await asyncio.sleep(0.5)
                    finished = time.time()
                    await asyncio.sleep(min(2.0, 60.0 / rate))  # let anything still in flight land before counting
                    died = [p for p in procs if not p.alive]
                    for p in died:
                        print(f"worker {p.name} died (exit {p.proc.returncode}):\n{p.log_tail()}", file=sys.stderr)
                    await asyncio.gather(*(p.stop() for p in procs))

                    # ---- the measurements
                    rows = await pool.fetch(
                        "SELECT stream_id, occurred_at, actor FROM events WHERE type = 'TokenRefreshed'")
                    failed = await pool.fetchval("SELECT count(*) FROM events WHERE type = 'TokenRefreshFailed'")
                finally:
                    await pool.close()
    finally:
        for p in procs:
            await p.kill()
        await sim.stop()
    if not died:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"worker logs: {log_dir}", file=sys.stderr)

    per_stream = collections.Counter(r["stream_id"] for r in rows)
    first = {}
    for r in rows:
        if r["stream_id"] not in first or r["occurred_at"] < first[r["stream_id"]]:
            first[r["stream_id"]] = r["occurred_at"]
    before = sum(1 for t in first.values() if t < expiry)
    # How late after its due moment each account was refreshed (accelerated seconds): near 0 when
    # the workers keep up, growing when they do not (then the buckets show their throughput).
    lags = sorted((t - due_at[s]).total_seconds() for s, t in first.items() if s in due_at)
    lag_p50 = lags[len(lags) // 2] if lags else None
    lag_p99 = lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else None
    window_start, window_end = expiry - timedelta(seconds=WINDOW[0]), expiry - timedelta(seconds=WINDOW[1])
    buckets = bucket_counts([r["occurred_at"] for r in rows], window_start, window_end)
    in_window = sum(buckets)
    mean = in_window / len(buckets)
    peak_to_mean = max(buckets) / mean if mean else float("inf")
    outside = len(rows) - in_window
    by_actor = collections.Counter(r["actor"] for r in rows)
    shares = [round(by_actor.get(f"system:{p.name}", 0) / len(rows), 3) if rows else 0.0 for p in procs]
    counters = sim.counters()
    grant_success = {gid: stats["successful_refreshes"] for gid, stats in counters["grants"].items()}
    twice_events = {s for s, n in per_stream.items() if n > 1}
    twice_grants = {gid for gid, n in grant_success.items() if n > 1}
    never = [a for a, gid in grant_of.items() if grant_success.get(gid, 0) == 0]
    double_refreshes = len(twice_events | {f"account-{a}" for a, gid in grant_of.items() if gid in twice_grants})
    total = counters["total"]
    print(f"refreshes per {BUCKET_SECONDS:g} s bucket of [T-180 s, T-60 s): {buckets}", flush=True)
    print(f"refreshed: {len(first)} of {accounts} accounts ({before} before T), {len(rows)} TokenRefreshed events,"
          f" {outside} outside the window, {failed} TokenRefreshFailed; by process: {dict(by_actor)}", flush=True)
    if lags:
        print(f"refreshed after its due moment by (accelerated s): p50 {lag_p50:.1f}, p99 {lag_p99:.1f},"
              f" max {lags[-1]:.1f}", flush=True)
    print(f"simulator: {total['successful_refreshes']} successful refreshes, {total['refresh_requests']} requests,"
          f" max concurrent per grant {total['max_concurrent_refreshes_per_grant']},"
          f" reuse detected {total['reuse_detected']}, invalid_grant {total['invalid_grant_responses']};"
          f" grants refreshed more than once {len(twice_grants)}, never {len(never)}", flush=True)
    return result_line(
        "schedule", value=before / accounts, unit="fraction", ceiling=1.0,
        peak_to_mean=round(peak_to_mean, 3), workers_share=shares, double_refreshes=double_refreshes,
        seconds=round(finished - phase_started, 2),
        refreshed_before_expiry=before, accounts=accounts, rate=rate, bucket_mean=round(mean, 1),
        bucket_max=max(buckets), outside_window=outside, refresh_failures=failed,
        lag_p50_s=round(lag_p50, 1) if lags else None, lag_p99_s=round(lag_p99, 1) if lags else None,
        lag_max_s=round(lags[-1], 1) if lags else None,
        max_concurrent_refreshes_per_grant=total["max_concurrent_refreshes_per_grant"],
        reuse_detected=total["reuse_detected"], import_seconds=round(import_seconds, 2),
    )


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="linkledger bench schedule", description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=10_000, help="accounts expiring together (default 10,000)")
    parser.add_argument("--rate", type=float, default=1.1,
                        help="clock rate, above 1 (default 1.1: the 120 s window in 109 wall s); keep "
                             "accounts*rate/120 within the refreshes per second the workers sustain")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="wall seconds to wait for every refresh (default: until T, plus 60 s)")
    parser.add_argument("--worker", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--idle-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        asyncio.run(_worker_main(args.worker, args.idle_seconds))
        return
    print(asyncio.run(run(args.accounts, args.rate, args.timeout, workers=args.workers)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
