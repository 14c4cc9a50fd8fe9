"""The `linkledger` command."""

import argparse
import asyncio
import base64
import json
import logging
import os
import signal
import sys
from pathlib import Path

from service.runtime import collector_paused, tune_collector
from service.settings import ConfigError, Settings, load_settings

log = logging.getLogger("linkledger")


class CliError(Exception):
    """Stops the command with a one-line message and exit status 2."""


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)


async def _migrate(database_url: str) -> list[str]:
    from events.database import migrate
    from service.db import all_migrations

    return await migrate(database_url, all_migrations())


async def _serve(settings: Settings, *, banner=None) -> None:
    """Run the gateway and workers until SIGINT/SIGTERM."""
    from aiohttp import web

    from service.gateway.app import create_app

    app = create_app(settings)  # validates keys and settings before anything is touched
    applied = await _migrate(settings.database_url)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    await site.start()
    port = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if banner:
        banner(f"http://{settings.http_host}:{port}")
    else:
        log.info("linkledger listening on http://%s:%s", settings.http_host, port)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await runner.cleanup()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_settings(require=("database_url", "nats_url"))
    _setup_logging(settings.log_level)
    asyncio.run(_serve(settings))
    return 0


def _new_signing_key() -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    seed = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.urlsafe_b64encode(seed).decode().rstrip("=")


def _dev_secret(data_dir: Path | None, name: str, make) -> str:
    """A dev-only secret, kept with the data when there is a data dir."""
    path = data_dir / name if data_dir else None
    if path and path.exists():
        return path.read_text().strip()
    value = make()
    if path:
        path.write_text(value)
        path.chmod(0o600)
    return value


async def _bootstrap_admin_key(database_url: str) -> str:
    import asyncpg

    from service.apikeys import create_key

    conn = await asyncpg.connect(database_url)
    try:
        issued = await create_key(conn, role="admin", environments=("*",), name="dev bootstrap", created_by="linkledger dev")
    finally:
        await conn.close()
    return issued.secret


def cmd_dev(args: argparse.Namespace) -> int:
    base = load_settings()
    _setup_logging(base.log_level)
    data_dir = Path(args.data_dir).resolve() if args.data_dir else None
    if data_dir:
        data_dir.mkdir(parents=True, exist_ok=True)
    stack = None
    if not (base.database_url and base.nats_url):
        from scripts.devstack import EmbeddedStack

        print("starting embedded PostgreSQL and NATS (JetStream)...", flush=True)
        stack = EmbeddedStack(data_dir / "services" if data_dir else None, keep_data=data_dir is not None).start()
    try:
        settings = load_settings(
            database_url=base.database_url or stack.database_url,
            nats_url=base.nats_url or stack.nats_url,
            http_port=args.port if args.port is not None else base.http_port,
            ledger_signing_key=base.ledger_signing_key or _dev_secret(data_dir, "ledger-signing-key", _new_signing_key),
            digest_interval_seconds=base.digest_interval_seconds,
            keyring=base.keyring or (None if base.keyring_file else _dev_secret(data_dir, "keyring.json", _new_keyring)),
            keyring_file=base.keyring_file,
            audit_key=base.audit_key or _dev_secret(data_dir, "audit-key", _new_audit_key),
        )
        asyncio.run(_migrate(settings.database_url))
        admin_key = asyncio.run(_bootstrap_admin_key(settings.database_url))

        def banner(url: str) -> None:
            print(f"linkledger dev is up\n  gateway:    {url}  (try {url}/readyz)\n"
                  f"  postgres:   {settings.database_url}\n  nats:       {settings.nats_url}\n"
                  f"  data:       {data_dir or 'temporary (use --data-dir to keep it)'}\n"
                  f"  admin key:  {admin_key}   (shown once; Authorization: Bearer <key>)\n"
                  "Ctrl-C stops everything.", flush=True)

        asyncio.run(_serve(settings, banner=banner))
    finally:
        if stack:
            stack.stop()
    print("stopped.", flush=True)
    return 0


def _new_keyring() -> str:
    from service.crypto.keyring import Keyring

    return Keyring.generate()


def _new_audit_key() -> str:
    from service.crypto.fingerprint import generate_audit_key

    return generate_audit_key()


def _uow_settings() -> Settings:
    from service.bootstrap import load_fingerprinter, load_keyring

    settings = load_settings(require=("database_url",))
    load_keyring(settings)
    load_fingerprinter(settings)
    return settings


async def _with_uow(settings: Settings, work):
    from events.database import create_pool
    from service.bootstrap import bootstrap

    pool = await create_pool(settings.database_url, role=settings.database_role or None, max_size=20)
    try:
        return await work(bootstrap(settings, pool).acting_as(f"cli:{os.environ.get('USER', 'unknown')}"))
    finally:
        await pool.close()


def cmd_keys(args: argparse.Namespace) -> int:
    import asyncpg

    from service import apikeys

    if args.keys_command == "generate":
        print(json.dumps({"LINKLEDGER_KEYRING": _new_keyring(), "LINKLEDGER_AUDIT_KEY": _new_audit_key()}, indent=2))
        return 0
    if args.keys_command == "rotate":
        return _rotate_keys()
    settings = load_settings(require=("database_url",))

    async def run():
        conn = await asyncpg.connect(settings.database_url)
        try:
            if args.keys_command == "create":
                issued = await apikeys.create_key(conn, role=args.role, environments=tuple(args.env),
                                                  name=args.name, created_by=f"cli:{os.environ.get('USER', 'unknown')}")
                print(f"{issued.secret}\n(key {issued.key.key_id}, role {issued.key.role}, environments "
                      f"{', '.join(issued.key.environments)}; shown once, only its hash is stored)")
            elif args.keys_command == "list":
                for row in await apikeys.list_keys(conn):
                    state = "revoked" if row["revoked_at"] else "active"
                    print(f"{row['key_id']}  {row['role']:8}  {','.join(row['environments']):20}  {state:7}  {row['name']}")
            elif args.keys_command == "revoke":
                if not await apikeys.revoke_key(conn, args.key_id):
                    raise CliError(f"no active key {args.key_id}")
                print(f"revoked {args.key_id}")
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except ValueError as exc:
        raise CliError(str(exc)) from None
    return 0


def _rotate_keys() -> int:
    from rich.progress import Progress

    from events.database import create_pool
    from service.bootstrap import load_keyring
    from service.crypto.datakeys import DataKeys

    settings = load_settings(require=("database_url",))
    keyring = load_keyring(settings)

    async def run():
        pool = await create_pool(settings.database_url, role=settings.database_role or None, max_size=4)
        try:
            with Progress() as progress:
                task = progress.add_task(f"rewrapping data keys under {keyring.primary}", total=None)
                done = await DataKeys(pool, keyring).rotate(lambda n, total: progress.update(task, completed=n, total=total))
            return done
        finally:
            await pool.close()

    done = asyncio.run(run())
    print(f"rewrapped {done} data key(s) under {keyring.primary}; no event was changed. Once every replica runs "
          "with this keyring, older key-encryption keys may be removed from it.")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from service.handlers.accounts import import_accounts
    from service.handlers.import_profiles import parse_import
    from service.handlers.import_workers import ImportWorkers

    settings = _uow_settings()
    body = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
    content_type = "application/json" if body.lstrip()[:1] == b"[" else "application/x-ndjson"

    async def run(uow):
        with collector_paused():  # as import_accounts does, for the parse of the whole file too
            records = parse_import(body, content_type, environment=args.env, profile=args.profile, now=uow.clock())
        results = []
        if settings.import_workers and len(records) > 1000:
            uow.shared.import_workers = ImportWorkers(uow.data_keys.keyring, uow.fingerprinter, settings.import_workers)
            await uow.shared.import_workers.start()
        try:
            with Progress() as progress:
                task = progress.add_task(f"importing into {args.env}", total=len(records))
                for start in range(0, len(records), 1000):
                    results.extend(await import_accounts(records[start:start + 1000], uow, profile=args.profile))
                    progress.update(task, completed=len(results))
        finally:
            if uow.shared.import_workers:
                await uow.shared.import_workers.close()
        return results

    results = asyncio.run(_with_uow(settings, run))
    summary = {"imported": 0, "updated": 0, "unchanged": 0, "rejected": 0}
    for result in results:
        summary[result.outcome] += 1
        if result.outcome == "rejected":
            print(f"line {result.line}: rejected: {result.field or '(record)'}: {result.reason}", file=sys.stderr)
    print(", ".join(f"{n} {k}" for k, n in summary.items()))
    return 1 if summary["rejected"] else 0


def cmd_export(args: argparse.Namespace) -> int:
    from service.handlers.accounts import export_accounts

    settings = _uow_settings()
    out = open(args.output, "w") if args.output != "-" else sys.stdout

    async def run(uow):
        count = 0
        async for record in export_accounts(uow, environment=args.env, purpose=args.purpose, integration=args.integration):
            out.write(json.dumps(record) + "\n")
            count += 1
        return count

    try:
        count = asyncio.run(_with_uow(settings, run))
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} account(s); each has a TokensExported event", file=sys.stderr)
    return 0


def cmd_openapi(args: argparse.Namespace) -> int:
    from service.gateway.openapi import build_openapi

    print(json.dumps(build_openapi(), indent=2))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings(require=("database_url",))
    applied = asyncio.run(_migrate(settings.database_url))
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "; up to date"))
    return 0


def _trusted_public_key(settings: Settings):
    from events.integrity import load_public_key, load_signing_key

    if settings.ledger_public_key:
        return load_public_key(settings.ledger_public_key)
    if settings.ledger_signing_key:
        return load_signing_key(settings.ledger_signing_key).public_key()
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    import asyncpg

    from events.integrity import verify_log

    settings = load_settings(require=("database_url",))
    key = _trusted_public_key(settings)

    async def run():
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await verify_log(conn, key)
        finally:
            await conn.close()

    report = asyncio.run(run())
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        if key is None:
            print("warning: no LINKLEDGER_LEDGER_PUBLIC_KEY or LINKLEDGER_LEDGER_SIGNING_KEY; digests were checked "
                  "against the keys they carry, which proves nothing about who signed them", file=sys.stderr)
        if report.ok:
            print(f"verify: ok: {report.events} events in {report.streams} streams, {report.digests} digest(s)")
        else:
            print(f"verify: FAILED at {report.problems[0]}")
            for problem in report.problems[1:]:
                print(f"  also: {problem}")
    return 0 if report.ok else 1


def cmd_digest(args: argparse.Namespace) -> int:
    import asyncpg

    from events.integrity import create_digest, load_signing_key

    settings = load_settings(require=("database_url", "ledger_signing_key"))

    async def run():
        conn = await asyncpg.connect(settings.database_url)
        try:
            digest = await create_digest(conn, load_signing_key(settings.ledger_signing_key))
        finally:
            await conn.close()
        if settings.nats_url:
            import nats

            from events.publish import publish_digest

            nc = await nats.connect(settings.nats_url, connect_timeout=3, max_reconnect_attempts=0)
            try:
                await publish_digest(nc, digest)
            finally:
                await nc.close()
        return digest

    digest = asyncio.run(run())
    print(json.dumps(digest.as_dict()))
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    from projections import PROJECTIONS
    from projections.rebuild import rebuild

    if args.all == bool(args.names):
        raise CliError(f"name the projections to rebuild, or --all ({', '.join(PROJECTIONS)})")
    unknown = [name for name in args.names if name not in PROJECTIONS]
    if unknown:
        raise CliError(f"no projection {unknown[0]!r} (there are {', '.join(PROJECTIONS)})")
    chosen = [PROJECTIONS[name] for name in (args.names or PROJECTIONS)]
    settings = load_settings(require=("database_url",))

    class Counts(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.completed:,.0f} of {task.total or 0:,.0f} events, {task.speed or 0:,.0f} events/s")

    async def run() -> int:
        # As the login role: a rebuild creates, drops and renames the projection tables.
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      Counts(), TimeRemainingColumn()) as progress:
            task = progress.add_task(f"rebuilding {', '.join(p.name for p in chosen)}", total=None)
            return await rebuild(settings.database_url, chosen, progress=lambda done, total: progress.update(
                task, completed=done, total=total))

    done = asyncio.run(run())
    print(f"rebuilt {', '.join(p.name for p in chosen)} from {done:,} events and swapped them in")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    import uuid

    import asyncpg

    from events.hashing import format_instant
    from projections import account_fold
    from projections.audit_trail import DETAIL_FIELDS

    settings = load_settings(require=("database_url",))
    until = None
    if args.until:
        from datetime import datetime

        try:
            until = datetime.fromisoformat(args.until.replace("Z", "+00:00"))
        except ValueError:
            raise CliError("--until must be an ISO-8601 instant, e.g. 2026-10-15T14:30:00Z") from None
        if until.tzinfo is None:
            raise CliError("--until must carry a time zone, e.g. 2026-10-15T14:30:00Z")
    try:
        account_id = str(uuid.UUID(args.account))
    except ValueError:
        raise CliError(f"{args.account!r} is not an account id (UUID)") from None

    async def run():
        conn = await asyncpg.connect(settings.database_url)
        try:
            return await conn.fetch(
                "SELECT version, position, type, data, occurred_at, actor, correlation_id, hash FROM events"
                " WHERE stream_id = $1 AND ($2::timestamptz IS NULL OR occurred_at <= $2) ORDER BY version",
                f"account-{account_id}", until)
        finally:
            await conn.close()

    rows = asyncio.run(run())
    if not rows:
        raise CliError(f"no history for account {account_id}" + (f" up to {args.until}" if until else ""))
    state = account_fold.blank(account_id)
    for row in rows:
        data = json.loads(row["data"])
        state = account_fold.evolve(state, row["type"], data)
        facts = " ".join(f"{k}={data[k]}" for k in DETAIL_FIELDS.get(row["type"], ()) if data.get(k) is not None)
        print(f"{format_instant(row['occurred_at'])}  v{row['version']:<4} {row['type']:<24} by {row['actor']}"
              f"{'  ' + facts if facts else ''}  -> {state['status']}"
              f"{' (' + state['status_reason'] + ')' if state['status_reason'] else ''}"
              f"  [position {row['position']}, hash {bytes(row['hash']).hex()[:16]}…]")
    print(f"as of {args.until or 'now'}: {state['environment']}/{state['integration']} tenant {state['tenant_id']},"
          f" status {state['status']}, version {state['version']}")
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    """Run only the relay (what `serve` runs beside the gateway), e.g. as its own deployment."""
    from service.workers.relay import run_standalone_relay

    settings = load_settings(require=("database_url", "nats_url"))
    _setup_logging(settings.log_level)
    asyncio.run(run_standalone_relay(settings, stream=args.stream, prefix=args.prefix, name=args.name))
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from service.workers.relay import catalog_with_subjects

    entries = catalog_with_subjects()
    if args.json:
        print(json.dumps(entries, indent=2))
    else:
        for entry in entries:
            print(f"{entry['type']} v{entry['schema_version']}  ({entry['family']})\n  subject:    {entry['subject']}\n"
                  f"  cloudevent: {entry['cloudevents_type']}\n  {entry['description']}\n"
                  f"  schema: {json.dumps(entry['schema'], sort_keys=True)}\n")
    return 0


BENCHMARKS = {"append": "append", "import": "bulk_import", "command": "command", "schedule": "schedule",
              "token-read": "token_read", "refresh": "refresh", "rebuild": "rebuild",
              "projection-lag": "projection_lag", "relay": "relay"}


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    # Benchmarks live with the other dev tools in scripts/; the CLI only dispatches to them.
    module = importlib.import_module(f"scripts.bench.{BENCHMARKS[args.name]}")
    module.main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="linkledger", description="Event-sourced custody of OAuth linked accounts.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser("dev", help="run everything locally: embedded PostgreSQL and NATS, gateway, workers")
    dev.add_argument("--port", type=int, default=None, help="gateway port (default LINKLEDGER_HTTP_PORT or 8080; 0 = any)")
    dev.add_argument("--data-dir", help="keep the embedded databases here across runs")
    dev.set_defaults(func=cmd_dev)

    sub.add_parser("serve", help="run the gateway and workers against LINKLEDGER_DATABASE_URL/NATS_URL").set_defaults(func=cmd_serve)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    verify = sub.add_parser("verify", help="recompute every hash chain and check the signed digests")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.set_defaults(func=cmd_verify)

    sub.add_parser("digest", help="sign a ledger digest of every stream's head now").set_defaults(func=cmd_digest)

    keys = sub.add_parser("keys", help="API keys and key-encryption keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create = keys_sub.add_parser("create", help="create an API key (shown once)")
    create.add_argument("--role", required=True, choices=("admin", "operator", "service", "auditor"))
    create.add_argument("--env", action="append", required=True, help="an environment it may use (repeat; * for all)")
    create.add_argument("--name", required=True, help="who or what holds it")
    keys_sub.add_parser("list", help="list API keys (never the keys themselves)")
    revoke = keys_sub.add_parser("revoke", help="revoke an API key")
    revoke.add_argument("key_id")
    keys_sub.add_parser("generate", help="print a new keyring and audit key for LINKLEDGER_KEYRING / LINKLEDGER_AUDIT_KEY")
    keys_sub.add_parser("rotate", help="rewrap every data key under the keyring's primary key-encryption key")
    keys.set_defaults(func=cmd_keys)

    imp = sub.add_parser("import", help="bulk-import accounts from a file (NDJSON or JSON array)")
    imp.add_argument("file", help="path, or - for standard input")
    imp.add_argument("--env", required=True)
    imp.add_argument("--profile", choices=("canonical", "truto", "nango"), default="canonical")
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", help="export tokens in the canonical import format (records a TokensExported each)")
    exp.add_argument("--env", required=True)
    exp.add_argument("--integration")
    exp.add_argument("--purpose", required=True, help="why: recorded in every account's history")
    exp.add_argument("--output", "-o", default="-", help="file (default standard output)")
    exp.set_defaults(func=cmd_export)

    sub.add_parser("openapi", help="print the OpenAPI document").set_defaults(func=cmd_openapi)

    rebuild = sub.add_parser("rebuild", help="rebuild projections beside the live ones and swap them in (blue/green)")
    rebuild.add_argument("names", nargs="*", metavar="NAME", help="account_view, audit_trail, migration_health")
    rebuild.add_argument("--all", action="store_true", help="every projection")
    rebuild.set_defaults(func=cmd_rebuild)

    replay = sub.add_parser("replay", help="print an account's history as a readable timeline")
    replay.add_argument("account", metavar="ACCOUNT", help="account id")
    replay.add_argument("--until", help="stop at this instant (ISO-8601)")
    replay.set_defaults(func=cmd_replay)

    relay = sub.add_parser("relay", help="run only the relay that publishes the log to NATS JetStream")
    relay.add_argument("--name", default="default", help="checkpoint name (one active relay per name)")
    relay.add_argument("--stream", default=None, help="JetStream stream (default LINKLEDGER)")
    relay.add_argument("--prefix", default=None, help="subject prefix (default linkledger)")
    relay.set_defaults(func=cmd_relay)

    events = sub.add_parser("events", help="the event catalog subscribers rely on")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="ACTION")
    cat = events_sub.add_parser("catalog", help="every event type with its JSON Schema, subject and CloudEvents type")
    cat.add_argument("--json", action="store_true", help="one JSON document")
    events.set_defaults(func=cmd_events)

    bench = sub.add_parser("bench", help="run a benchmark; the last line printed is one JSON object")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    tune_collector()
    try:
        code = args.func(args)
    except (ConfigError, CliError) as exc:
        print(f"linkledger: {exc}", file=sys.stderr)
        code = 2
    except (OSError, asyncio.TimeoutError) as exc:
        print(f"linkledger: cannot reach a service: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        import asyncpg

        if not isinstance(exc, asyncpg.PostgresError):
            raise
        print(f"linkledger: PostgreSQL refused: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
