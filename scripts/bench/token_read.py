"""`linkledger bench token-read`: `GET /v1/accounts/{id}/token` against a real gateway
(`linkledger serve` in its own process, over a scratch database of 1,000 imported accounts whose
tokens are valid for hours), loaded from another process over 16 keep-alive connections with a
random account per request. Ceiling, measured in the same run and loaded identically: a bare
aiohttp app in its own process whose handler does one single-row asyncpg SELECT of the account's
stream-head row through the same kind of pool and answers JSON. Rounds alternate between the two
so drift hits both alike; medians are reported.

The load comes from `wrk` when it is on the PATH, else from this module's own load generator
(`--load`, a separate Python process speaking keep-alive HTTP/1.1 over raw asyncio connections,
which costs the shared cores far less per request than aiohttp's client; `--client aiohttp` uses
that instead); the result line says which (`load_generator`). Every account is read once from
both servers before the rounds (warm caches: PostgreSQL's buffers, linkledger's data keys), and
each round has an unmeasured warm-up of its own.

Result: value/ceiling in req/s, ratio, p50_ms/p99_ms (linkledger), ceiling_p50_ms/ceiling_p99_ms,
p99_ratio (linkledger p99 / bare p99), cpu_ms_per_request and ceiling_cpu_ms_per_request (each
server process's own CPU per answer, from /proc: steadier than rates on a shared machine), and
audit_events/audited_reads (the CredentialsAccessed events the gateway wrote for the reads).

Modes of this module (the bench starts the other two itself):
    python -m scripts.bench.token_read [--seconds S] [--rounds R] [--accounts N] [--connections C]
                                       [--warmup S] [--pool-size P] [--client auto|wrk|raw|aiohttp]
    python -m scripts.bench.token_read --bare --port N --dsn DSN             the ceiling server
    python -m scripts.bench.token_read --load --url U --ids FILE --key-file F --seconds S --connections C
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Iterator

import asyncpg

from scripts.bench.accounts import truto_line
from scripts.bench.common import median, result_line, scratch_database, servers

ROOT = Path(__file__).resolve().parents[2]
ENVIRONMENT = "bench"


# ----------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def child(argv: list[str], env: dict[str, str], name: str) -> Iterator[subprocess.Popen]:
    """A child process whose stderr goes to a temporary file; always stopped (TERM, then KILL)."""
    log = tempfile.TemporaryFile(mode="w+b")
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=log, start_new_session=True)
    proc.log = log  # type: ignore[attr-defined]
    proc.bench_name = name  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def log_tail(proc: subprocess.Popen, limit: int = 3000) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read().decode(errors="replace")[-limit:]  # type: ignore[attr-defined]


def wait_ready(proc: subprocess.Popen, url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.bench_name} exited with {proc.returncode} before it was ready:\n"  # type: ignore[attr-defined]
                               f"{log_tail(proc)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{proc.bench_name} not ready at {url} after {timeout:.0f} s:\n{log_tail(proc)}")  # type: ignore[attr-defined]


def cpu_seconds(pid: int) -> float:
    """User + system CPU a process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def clean_env(**values: str) -> dict[str, str]:
    """This environment without any LINKLEDGER_* setting, plus `values`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINKLEDGER_")}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(values)
    return env


def linkledger_argv() -> list[str]:
    entry = Path(sys.executable).with_name("linkledger")
    return [str(entry)] if entry.exists() else [sys.executable, "-m", "service.cli"]


# ----------------------------------------------------------------------------------------- set-up


async def prepare(dsn: str, accounts: int, keyring: str, audit_key: str) -> tuple[list[str], str]:
    """Import `accounts` accounts with tokens valid for six hours and mint a service key: (ids, key)."""
    from events.database import create_pool
    from service.apikeys import create_key
    from service.bootstrap import bootstrap
    from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient
    from service.handlers.accounts import import_accounts
    from service.handlers.import_profiles import parse_import
    from service.handlers.integrations import configure_integration, configure_oauth_client
    from service.settings import load_settings

    settings = load_settings(database_url=dsn, keyring=keyring, audit_key=audit_key)
    pool = await create_pool(dsn, min_size=2, max_size=10)
    try:
        uow = bootstrap(settings, pool).acting_as("system:bench")
        await configure_integration(ConfigureIntegration(environment=ENVIRONMENT, name="salesforce"), uow)
        await configure_oauth_client(ConfigureOAuthClient(
            environment=ENVIRONMENT, integration="salesforce", client_id="bench", client_secret="bench-secret",
            token_url="https://login.example.com/token"), uow)
        run_id = uuid.uuid4().hex[:6]
        expires_at = (uow.clock() + timedelta(hours=6)).isoformat().replace("+00:00", "Z")
        lines = []
        for i in range(accounts):
            record = json.loads(truto_line(i, run_id))
            record["context"]["oauth"]["token"]["expires_at"] = expires_at
            lines.append(json.dumps(record).encode())
        records = parse_import(b"\n".join(lines), "application/x-ndjson", environment=ENVIRONMENT, profile="truto",
                               now=uow.clock())
        results = await import_accounts(records, uow, profile="truto")
        ids = [str(r.account_id) for r in results if r.outcome == "imported"]
        if len(ids) != accounts:
            raise RuntimeError(f"imported {len(ids)} of {accounts} accounts")
        issued = await create_key(pool, role="service", environments=(ENVIRONMENT,), name="bench token-read",
                                  created_by="bench")
        return ids, issued.secret
    finally:
        await pool.close()


# ----------------------------------------------------------------------------------------- ceiling server


async def serve_bare(port: int, dsn: str, pool_size: int) -> None:
    """One asyncpg SELECT of the account's stream-head row per request, answered as JSON."""
    from aiohttp import web

    from events.database import create_pool

    pool = await create_pool(dsn, role=None, min_size=pool_size, max_size=pool_size)

    async def token(request: web.Request) -> web.Response:
        account_id = request.match_info["id"]
        snapshot = await pool.fetchval("SELECT snapshot FROM stream_heads WHERE stream_id = $1", f"account-{account_id}")
        if snapshot is None:
            return web.json_response({"error": "no such account"}, status=404)
        return web.json_response({"account_id": account_id, "snapshot": json.loads(snapshot)},
                                 headers={"Cache-Control": "no-store"})

    async def ready(request: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_get("/v1/accounts/{id}/token", token)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        await runner.cleanup()
        await pool.close()


# ----------------------------------------------------------------------------------------- load generators


class _Http11(asyncio.Protocol):
    """A minimal keep-alive HTTP/1.1 client connection, one request at a time. Much cheaper per
    request than aiohttp's client, which matters when the load generator shares the cores with the
    servers it loads."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future | None = None
        self.status = 0
        self.body_end: int | None = None  # where the current response ends, once its head is parsed
        self.chunked = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.body_end is None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").lower().split("\r\n")
            self.status = int(head[0].split(" ", 2)[1])
            fields = dict(line.split(":", 1) for line in head[1:] if ":" in line)
            self.chunked = "chunked" in fields.get("transfer-encoding", "")
            self.body_end = end + 4 + (0 if self.chunked else int(fields.get("content-length", "0")))
        if self.chunked:
            terminator = self.buffer.find(b"\r\n0\r\n\r\n", self.body_end - 2)
            if terminator < 0:
                return
            done = terminator + 7
        elif len(self.buffer) >= self.body_end:
            done = self.body_end
        else:
            return
        del self.buffer[:done]
        self.body_end = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.status)

    async def request(self, data: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def load(url: str, ids: list[str], key: str, seconds: float, connections: int, warmup: float,
               client: str = "raw") -> dict:
    """`connections` keep-alive connections, each one request at a time, a random account per request:
    `warmup` seconds unmeasured, then `seconds` measured. Returns req/s, latency percentiles, errors."""
    from urllib.parse import urlsplit

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    failures = 0
    pick = random.Random(1).choice
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()

    if client == "raw":
        template = (f"GET /v1/accounts/{{}}/token HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    f"Authorization: Bearer {key}\r\nUser-Agent: linkledger-bench\r\n\r\n")
        requests = {i: template.format(i).encode() for i in ids}
        pool: list[_Http11] = []

        async def one() -> int:
            conn = pool.pop() if pool else (await loop.create_connection(_Http11, parts.hostname, parts.port))[1]
            try:
                status = await conn.request(requests[pick(ids)])
            except BaseException:
                conn.transport.close()
                raise
            pool.append(conn)
            return status

        async def close() -> None:
            for conn in pool:
                conn.transport.close()

        errors: tuple[type[BaseException], ...] = (ConnectionError, OSError, ValueError)
    else:
        import aiohttp

        session = aiohttp.ClientSession(url, connector=aiohttp.TCPConnector(limit=connections),
                                        headers={"Authorization": f"Bearer {key}"})

        async def one() -> int:
            async with session.get(f"/v1/accounts/{pick(ids)}/token") as response:
                await response.read()
                return response.status

        async def close() -> None:
            await session.close()

        errors = (aiohttp.ClientError, OSError)

    async def worker(deadline: float, measure: bool) -> None:
        nonlocal failures
        while (started := time.perf_counter()) < deadline:
            try:
                status = await one()
            except errors:
                failures += 1
                continue
            if measure:
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1

    try:
        if warmup > 0:
            deadline = time.perf_counter() + warmup
            await asyncio.gather(*(worker(deadline, False) for _ in range(connections)))
        failures = 0
        begun = time.perf_counter()
        await asyncio.gather(*(worker(begun + seconds, True) for _ in range(connections)))
        elapsed = time.perf_counter() - begun
    finally:
        await close()
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2) if ordered else 0.0

    ok = statuses.get(200, 0)
    return {"requests": len(ordered), "ok": ok, "errors": len(ordered) - ok + failures, "statuses": statuses,
            "seconds": round(elapsed, 3), "rps": round(ok / elapsed, 1), "p50_ms": pct(0.5), "p90_ms": pct(0.9),
            "p99_ms": pct(0.99), "max_ms": pct(1.0)}


async def warm(url: str, ids: list[str], key: str, connections: int) -> int:
    """Read every account once (unmeasured), so both servers start with warm caches: PostgreSQL's
    buffers, linkledger's unwrapped data keys. Returns how many answers were not 200."""
    import aiohttp

    queue = list(ids)
    bad = 0
    async with aiohttp.ClientSession(url, headers={"Authorization": f"Bearer {key}"}) as session:

        async def worker() -> None:
            nonlocal bad
            while queue:
                async with session.get(f"/v1/accounts/{queue.pop()}/token") as response:
                    await response.read()
                    bad += response.status != 200

        await asyncio.gather(*(worker() for _ in range(connections)))
    return bad


WRK_SCRIPT = """
local ids = {%s}
local auth = "Bearer %s"
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/v1/accounts/" .. ids[math.random(#ids)] .. "/token", {["Authorization"] = auth})
end
done = function(summary, latency, requests)
  local s = summary
  local bad = s.errors.status + s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout
  io.write(string.format('WRK_RESULT {"requests": %%d, "errors": %%d, "seconds": %%.3f, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    s.requests, bad, s.duration / 1e6, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def run_wrk(wrk: str, url: str, script: str, seconds: float, connections: int, warmup: float) -> dict:
    threads = str(min(connections, max(1, os.cpu_count() or 1)))
    base = [wrk, "-t", threads, "-c", str(connections), "-s", script]
    if warmup > 0:
        subprocess.run([*base, "-d", f"{max(1, round(warmup))}s", url], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=warmup + 60, check=False)
    out = subprocess.run([*base, "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", url], capture_output=True,
                         text=True, timeout=seconds + 60, check=False)
    line = next((l for l in out.stdout.splitlines() if l.startswith("WRK_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result (exit {out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    raw = json.loads(line.removeprefix("WRK_RESULT "))
    ok = raw["requests"] - raw["errors"]
    return {"requests": raw["requests"], "ok": ok, "errors": raw["errors"], "seconds": raw["seconds"],
            "rps": round(ok / raw["seconds"], 1), "p50_ms": round(raw["p50_us"] / 1000, 2),
            "p90_ms": round(raw["p90_us"] / 1000, 2), "p99_ms": round(raw["p99_us"] / 1000, 2),
            "max_ms": round(raw["max_us"] / 1000, 2)}


def run_load(url: str, ids_file: str, key: str, seconds: float, connections: int, warmup: float,
             wrk_script: str | None, client: str) -> dict:
    """One measured load round from a separate process: wrk, or this module's generator (raw or aiohttp)."""
    if client == "wrk":
        return run_wrk(shutil.which("wrk"), url, wrk_script, seconds, connections, warmup)
    argv = [sys.executable, "-m", "scripts.bench.token_read", "--load", "--url", url, "--ids", ids_file,
            "--key-file", key, "--seconds", str(seconds), "--connections", str(connections), "--warmup", str(warmup),
            "--client", client]
    proc = subprocess.Popen(argv, cwd=ROOT, env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=seconds + warmup + 120)
    finally:
        stop(proc)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"load generator failed (exit {proc.returncode}): {err[-3000:]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------- the bench


async def run(seconds: float = 10.0, rounds: int = 2, accounts: int = 1000, connections: int = 16,
              warmup: float = 2.0, pool_size: int = 20, client: str = "auto") -> str:
    from service.crypto.fingerprint import generate_audit_key
    from service.crypto.keyring import Keyring

    keyring, audit_key = Keyring.generate("kek-bench"), generate_audit_key()
    generator = client if client != "auto" else ("wrk" if shutil.which("wrk") else "raw")
    if generator == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("--client wrk: wrk is not on the PATH")
    ll_rounds: list[dict] = []
    bare_rounds: list[dict] = []
    # The load rounds block this event loop on purpose: nothing else runs in it meanwhile.
    with servers() as (server_dsn, nats_url), tempfile.TemporaryDirectory(prefix="ll-bench-") as tmp:
        async with scratch_database(server_dsn) as dsn:
            started = time.perf_counter()
            ids, key = await prepare(dsn, accounts, keyring, audit_key)
            print(f"imported {len(ids)} accounts in {time.perf_counter() - started:.1f} s", flush=True)
            ids_file, key_file = Path(tmp) / "ids.json", Path(tmp) / "key"
            ids_file.write_text(json.dumps(ids))
            key_file.write_text(key)
            key_file.chmod(0o600)
            wrk_script = None
            if generator == "wrk":
                wrk_script = str(Path(tmp) / "token.lua")
                Path(wrk_script).write_text(WRK_SCRIPT % (", ".join(f'"{i}"' for i in ids), key))
            ll_port, bare_port = free_port(), free_port()
            ll_env = clean_env(
                LINKLEDGER_DATABASE_URL=dsn, LINKLEDGER_NATS_URL=nats_url, LINKLEDGER_KEYRING=keyring,
                LINKLEDGER_AUDIT_KEY=audit_key, LINKLEDGER_HTTP_HOST="127.0.0.1", LINKLEDGER_HTTP_PORT=str(ll_port),
                LINKLEDGER_REFRESH_WORKER="false", LINKLEDGER_DIGEST_INTERVAL_SECONDS="0",
                LINKLEDGER_LOG_LEVEL="WARNING", LINKLEDGER_POOL_SIZE=str(pool_size))
            bare_argv = [sys.executable, "-m", "scripts.bench.token_read", "--bare", "--port", str(bare_port),
                         "--dsn", dsn, "--pool-size", str(pool_size)]
            with child([*linkledger_argv(), "serve"], ll_env, "linkledger serve") as gateway, \
                    child(bare_argv, clean_env(), "bare aiohttp+asyncpg server") as bare:
                ll_url, bare_url = f"http://127.0.0.1:{ll_port}", f"http://127.0.0.1:{bare_port}"
                wait_ready(gateway, ll_url + "/readyz")
                wait_ready(bare, bare_url + "/readyz")
                for name, url in (("linkledger", ll_url), ("bare", bare_url)):
                    started = time.perf_counter()
                    bad = await warm(url, ids, key, connections)
                    print(f"warm-up: read all {len(ids)} accounts once from {name} in "
                          f"{time.perf_counter() - started:.1f} s ({bad} not 200)", flush=True)
                    if bad:
                        raise RuntimeError(f"{name}: {bad} of {len(ids)} token reads failed during warm-up")
                print(f"linkledger serve on {ll_url}, bare server on {bare_url}; load: {generator}, "
                      f"{connections} connections, {seconds:g} s per round after {warmup:g} s warm-up", flush=True)
                for round_no in range(rounds):
                    order = [("bare", bare_url, bare_rounds, bare), ("linkledger", ll_url, ll_rounds, gateway)]
                    if round_no % 2:
                        order.reverse()
                    for name, url, into, server in order:
                        if warmup > 0:  # unmeasured, in a load process of its own
                            run_load(url, str(ids_file), str(key_file), warmup, connections, 0, wrk_script, generator)
                        cpu = cpu_seconds(server.pid)
                        result = run_load(url, str(ids_file), str(key_file), seconds, connections, 0, wrk_script,
                                          generator)
                        # the server's own CPU per answer: steadier than req/s on a shared machine
                        result["cpu_ms"] = round(1000 * (cpu_seconds(server.pid) - cpu) / max(1, result["requests"]), 3)
                        into.append(result)
                        print(f"{name:<10} round {round_no + 1}: {result['rps']:,.0f} req/s  p50 {result['p50_ms']} ms"
                              f"  p99 {result['p99_ms']} ms  errors {result['errors']}  server CPU "
                              f"{result['cpu_ms']} ms/request", flush=True)
                        for proc in (gateway, bare):
                            if proc.poll() is not None:
                                raise RuntimeError(f"{proc.bench_name} died: {log_tail(proc)}")
                stop(gateway)  # a clean stop: it flushes the token reads it has counted to the audit trail
                tail = log_tail(gateway, 1500).strip()
                if tail:
                    print(f"linkledger serve stderr (tail):\n{tail}", flush=True)
            conn = await asyncpg.connect(dsn)
            try:
                audit_events, audited_reads = await conn.fetchrow(
                    "SELECT count(*), coalesce(sum((data::jsonb->>'count')::bigint), 0)::bigint FROM events"
                    " WHERE type = 'CredentialsAccessed'")
            finally:
                await conn.close()
            print(f"audit trail: {audit_events} CredentialsAccessed events covering {audited_reads} token reads",
                  flush=True)

    def med(results: list[dict], field: str) -> float:
        return round(median([r[field] for r in results]), 3)

    value, ceiling = med(ll_rounds, "rps"), med(bare_rounds, "rps")
    p99, ceiling_p99 = med(ll_rounds, "p99_ms"), med(bare_rounds, "p99_ms")
    return result_line(
        "token-read", value, "req/s", ceiling,
        p50_ms=med(ll_rounds, "p50_ms"), p99_ms=p99, ceiling_p50_ms=med(bare_rounds, "p50_ms"),
        ceiling_p99_ms=ceiling_p99, p99_ratio=round(p99 / ceiling_p99, 3) if ceiling_p99 else None,
        cpu_ms_per_request=med(ll_rounds, "cpu_ms"), ceiling_cpu_ms_per_request=med(bare_rounds, "cpu_ms"),
        audit_events=audit_events, audited_reads=audited_reads, errors=sum(r["errors"] for r in ll_rounds), ceiling_errors=sum(r["errors"] for r in bare_rounds),
        value_rounds=[r["rps"] for r in ll_rounds], ceiling_rounds=[r["rps"] for r in bare_rounds],
        connections=connections, accounts=accounts, seconds=seconds, rounds=rounds, load_generator=generator if generator == "wrk" else f"python-{generator}")


def _exit_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops the children it started."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, handler)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="linkledger bench token-read")
    parser.add_argument("--bare", action="store_true", help="serve the ceiling app (used by the bench itself)")
    parser.add_argument("--load", action="store_true", help="run the load generator (used by the bench itself)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--dsn")
    parser.add_argument("--pool-size", type=int, default=20)
    parser.add_argument("--url")
    parser.add_argument("--ids")
    parser.add_argument("--key-file")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--accounts", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--client", default="auto", choices=("auto", "wrk", "raw", "aiohttp"),
                        help="load generator: wrk if installed, else a raw HTTP/1.1 Python client (auto); "
                             "or aiohttp's client")
    args = parser.parse_args(argv)
    if args.bare:
        asyncio.run(serve_bare(args.port, args.dsn, args.pool_size))
    elif args.load:
        ids = json.loads(Path(args.ids).read_text())
        key = Path(args.key_file).read_text().strip()
        client = "raw" if args.client in ("auto", "wrk") else args.client
        print(json.dumps(asyncio.run(load(args.url, ids, key, args.seconds, args.connections, args.warmup, client))))
    else:
        _exit_on_sigterm()
        print(asyncio.run(run(seconds=args.seconds, rounds=args.rounds, accounts=args.accounts,
                              connections=args.connections, warmup=args.warmup, pool_size=args.pool_size,
                              client=args.client)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
