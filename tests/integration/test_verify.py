"""`verify` (DESIGN invariants 4 and 5): recomputing every chain and checking the signed digests.

Acceptance: a changed byte in one event's data, a deleted middle event, a deleted tail and a
deleted stream each make `verify` fail, naming the place. The tampering is done the way an
attacker with the database owner's rights would: as superuser, with triggers skipped
(session_replication_role = replica).
"""

import sys
import asyncio
import base64
import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from events.envelope import NewEvent
from events.hashing import GENESIS_HASH, body_hash, chain_hash, header_bytes
from events.integrity import create_digest, load_signing_key, verify_log

ROOT = Path(__file__).resolve().parents[2]
LINKLEDGER = Path(sys.executable).parent / "linkledger"  # the console script of the running environment


def new_key_b64() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


@dataclass
class Log:
    streams: dict[str, int]  # stream id -> last version
    key_b64: str

    @property
    def key(self) -> Ed25519PrivateKey:
        return load_signing_key(self.key_b64)

    @property
    def public_key(self):
        return self.key.public_key()

    @property
    def events(self) -> int:
        return sum(self.streams.values())


ACCOUNT_A = f"account-{uuid.UUID(int=0xA)}"
ACCOUNT_B = f"account-{uuid.UUID(int=0xB)}"
INTEGRATION = "integration-prod-hubspot"
ENVIRONMENT = "environment-prod"


def _event(i: int, type_: str, *, secret: bool = False, **data) -> NewEvent:
    return NewEvent(
        type=type_,
        data={"n": i, "integration": "hubspot", "note": "Zoë's token", **data},
        occurred_at=datetime(2024, 3, 1, tzinfo=timezone.utc) + timedelta(minutes=i, microseconds=i),
        actor="key_admin_01" if i % 2 else "system:refresher",
        correlation_id=uuid.uuid4() if i % 3 == 0 else None,
        causation_id=uuid.uuid4() if i % 4 == 0 else None,
        secret=os.urandom(48) if secret else None,
        key_id="kek-2024-01" if secret else None,
    )


async def build_log(store) -> Log:
    """Four streams, five events each (single appends and batches, some with ciphertext)."""
    streams: dict[str, int] = {}
    # Single-event appends (the one-statement hot path).
    for stream_id in (ACCOUNT_A, ACCOUNT_B):
        for v in range(1, 6):
            await store.append(stream_id, [_event(v, "TokenRefreshed", secret=v % 2 == 1)], v - 1)
        streams[stream_id] = 5
    # Batches (ll_append), first of three then of two.
    for stream_id in (INTEGRATION, ENVIRONMENT):
        await store.append(stream_id, [_event(v, "IntegrationConfigured", secret=v == 2) for v in (1, 2, 3)], 0)
        await store.append(stream_id, [_event(v, "OAuthClientConfigured", secret=True) for v in (4, 5)], 3)
        streams[stream_id] = 5
    return Log(streams, new_key_b64())


@pytest.fixture
async def log(store, owner) -> Log:
    built = await build_log(store)
    await create_digest(owner, built.key)
    return built


class Tamper:
    """Changes made as the owner with triggers off, as a careful attacker would."""

    def __init__(self, conn: asyncpg.Connection):
        self.conn = conn

    async def __aenter__(self):
        await self.conn.execute("SET session_replication_role = replica")
        return self.conn

    async def __aexit__(self, *exc):
        await self.conn.execute("SET session_replication_role = origin")


async def _verify(owner, log: Log):
    return await verify_log(owner, log.public_key)


def _first(report) -> str:
    assert not report.ok, "verify passed a tampered log"
    return str(report.problems[0])


# --------------------------------------------------------------------------- a clean log


async def test_a_clean_log_verifies(owner, log):
    report = await _verify(owner, log)
    assert report.ok, report.problems
    assert report.problems == []
    assert (report.streams, report.events, report.digests) == (4, 20, 1)
    assert report.as_dict() == {"ok": True, "streams": 4, "events": 20, "digests": 1, "problems": []}


async def test_a_clean_log_verifies_with_several_digests_and_later_appends(owner, store, log):
    await store.append(ACCOUNT_A, [_event(6, "TokenRefreshed", secret=True)], 5)
    await create_digest(owner, log.key)
    await store.append(ACCOUNT_A, [_event(7, "TokenRefreshed")], 6)  # after the latest digest
    await store.append("account-new", [_event(1, "AccountConnecting")], 0)
    report = await _verify(owner, log)
    assert report.ok, report.problems
    assert (report.streams, report.events, report.digests) == (5, 23, 2)


async def test_an_empty_log_verifies(owner):
    report = await verify_log(owner, None)
    assert report.ok and (report.streams, report.events, report.digests) == (0, 0, 0)


async def test_the_stored_hashes_are_the_documented_chain(owner, log):
    """An auditor recomputes the chain from the columns alone: hash = SHA-256(prev ‖ body)."""
    rows = await owner.fetch("SELECT * FROM events WHERE stream_id = $1 ORDER BY version", INTEGRATION)
    prev = GENESIS_HASH
    for r in rows:
        header = header_bytes(
            event_id=r["event_id"], stream_id=r["stream_id"], version=r["version"], type=r["type"],
            schema_version=r["schema_version"], occurred_at=r["occurred_at"], actor=r["actor"],
            correlation_id=r["correlation_id"], causation_id=r["causation_id"], key_id=r["key_id"],
        )
        assert bytes(r["prev_hash"]) == prev
        prev = chain_hash(prev, body_hash(header, r["data"], r["secret"]))
        assert bytes(r["hash"]) == prev
    head = await owner.fetchrow("SELECT version, last_hash FROM stream_heads WHERE stream_id = $1", INTEGRATION)
    assert (head["version"], bytes(head["last_hash"])) == (5, prev)


# --------------------------------------------------------------------------- the application role


async def test_the_application_role_cannot_change_or_delete_events(pool, log):
    for statement in (
        "UPDATE events SET data = '{}' WHERE version = 1",
        "DELETE FROM events WHERE version = 5",
        "TRUNCATE events",
        "DELETE FROM ledger_digests",
    ):
        async with pool.acquire() as conn:
            with pytest.raises(asyncpg.PostgresError):
                await conn.execute(statement)


async def test_the_owner_is_stopped_by_the_triggers(owner, log):
    for statement in ("UPDATE events SET actor = 'x' WHERE version = 1", "DELETE FROM events WHERE version = 5",
                      "TRUNCATE events", "UPDATE ledger_digests SET stream_count = 0", "TRUNCATE ledger_digests"):
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await owner.execute(statement)
    assert (await _verify(owner, log)).ok


# --------------------------------------------------------------------------- (a) a changed byte


async def test_a_changed_byte_in_one_events_data_is_named(owner, log):
    before = await owner.fetchval("SELECT data FROM events WHERE stream_id = $1 AND version = 3", ACCOUNT_B)
    after = before.replace("hubspot", "hubspoT", 1)
    assert after != before and json.loads(after)  # still valid JSON, one letter different
    async with Tamper(owner) as conn:
        await conn.execute("UPDATE events SET data = $2 WHERE stream_id = $1 AND version = 3", ACCOUNT_B, after)

    report = await _verify(owner, log)
    first = report.problems[0] if report.problems else None
    assert first is not None, "verify passed a log with a changed byte"
    assert first.where == f"stream {ACCOUNT_B}, version 3"
    assert "hash does not match" in first.what
    assert all(ACCOUNT_B in p.where for p in report.problems), report.problems
    assert report.as_dict()["ok"] is False


async def test_a_changed_byte_in_a_secret_is_named(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute(
            "UPDATE events SET secret = set_byte(secret, 0, get_byte(secret, 0) # 1)"
            " WHERE stream_id = $1 AND version = 4", INTEGRATION,
        )
    report = await _verify(owner, log)
    assert report.problems[0].where == f"stream {INTEGRATION}, version 4"
    assert "hash does not match" in report.problems[0].what


@pytest.mark.parametrize(
    "column, value",
    [("actor", "key_attacker"), ("type", "TokenExported"), ("key_id", "kek-other"),
     ("occurred_at", datetime(2020, 1, 1, tzinfo=timezone.utc)), ("event_id", uuid.UUID(int=99))],
)
async def test_a_changed_header_field_is_named(owner, log, column, value):
    async with Tamper(owner) as conn:
        await conn.execute(f"UPDATE events SET {column} = $2 WHERE stream_id = $1 AND version = 2", ACCOUNT_A, value)
    report = await _verify(owner, log)
    assert report.problems[0].where == f"stream {ACCOUNT_A}, version 2"
    assert "hash does not match" in report.problems[0].what


async def test_a_rewritten_chain_is_caught_by_the_digest(owner, log):
    """A careful attacker changes an event and recomputes its hash, every later hash and the head
    row, so every chain is self-consistent: only the signed digest can tell."""
    rows = await owner.fetch("SELECT * FROM events WHERE stream_id = $1 ORDER BY version", ACCOUNT_A)
    prev = GENESIS_HASH
    async with Tamper(owner) as conn:
        for r in rows:
            data = r["data"].replace("Zoë", "Eve") if r["version"] == 2 else r["data"]
            header = header_bytes(
                event_id=r["event_id"], stream_id=r["stream_id"], version=r["version"], type=r["type"],
                schema_version=r["schema_version"], occurred_at=r["occurred_at"], actor=r["actor"],
                correlation_id=r["correlation_id"], causation_id=r["causation_id"], key_id=r["key_id"],
            )
            new_hash = chain_hash(prev, body_hash(header, data, r["secret"]))
            await conn.execute(
                "UPDATE events SET data = $2, prev_hash = $3, hash = $4 WHERE event_id = $1",
                r["event_id"], data, prev, new_hash,
            )
            last_prev, prev = prev, new_hash
        await conn.execute(
            "UPDATE stream_heads SET last_hash = $2, prev_hash = $3 WHERE stream_id = $1", ACCOUNT_A, prev, last_prev
        )
    report = await _verify(owner, log)
    first = report.problems[0] if report.problems else None
    assert first is not None, "a consistently rewritten stream passed verify despite the digest"
    assert ACCOUNT_A in first.where
    assert "digest" in first.what


# --------------------------------------------------------------------------- (b) a deleted middle event


async def test_a_deleted_middle_event_is_named(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1 AND version = 3", INTEGRATION)
    report = await _verify(owner, log)
    first = report.problems[0] if report.problems else None
    assert first is not None, "verify passed a log with a deleted middle event"
    assert first.where.startswith(f"stream {INTEGRATION}")
    assert "version 3 missing" in first.what
    assert all(INTEGRATION in p.where for p in report.problems), report.problems


async def test_deleted_middle_events_are_named_as_a_range(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1 AND version IN (2, 3)", ACCOUNT_B)
    report = await _verify(owner, log)
    assert report.problems[0].where == f"stream {ACCOUNT_B}, version 4"
    assert "version 2..3 missing" in report.problems[0].what


async def test_a_deleted_first_event_is_named(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1 AND version = 1", ENVIRONMENT)
    report = await _verify(owner, log)
    assert report.problems[0].where.startswith(f"stream {ENVIRONMENT}")
    assert "version 1 missing" in report.problems[0].what


# --------------------------------------------------------------------------- (c) a deleted tail


async def test_a_deleted_tail_with_a_forged_head_row_is_caught_by_the_digest(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1 AND version > 3", ACCOUNT_A)
        new_last = await conn.fetchrow("SELECT hash, prev_hash FROM events WHERE stream_id = $1 AND version = 3", ACCOUNT_A)
        await conn.execute(
            "UPDATE stream_heads SET version = 3, last_hash = $2, prev_hash = $3 WHERE stream_id = $1",
            ACCOUNT_A, new_last["hash"], new_last["prev_hash"],
        )
    report = await _verify(owner, log)
    first = report.problems[0] if report.problems else None
    assert first is not None, "verify passed a log whose tail was deleted"
    assert first.where == f"stream {ACCOUNT_A}"
    assert "tail deleted" in first.what
    assert "5" in first.what and "3" in first.what  # signed at 5, ends at 3
    assert len(report.problems) == 1, report.problems
    assert report.events == 18


async def test_a_deleted_tail_with_the_head_row_left_is_named(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1 AND version > 3", ACCOUNT_B)
    report = await _verify(owner, log)
    assert report.problems[0].where == f"stream {ACCOUNT_B}"
    assert "tail deleted" in report.problems[0].what


# --------------------------------------------------------------------------- (d) a deleted stream


async def test_a_deleted_stream_is_caught_by_the_digest(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1", ENVIRONMENT)
        await conn.execute("DELETE FROM stream_heads WHERE stream_id = $1", ENVIRONMENT)
    report = await _verify(owner, log)
    first = report.problems[0] if report.problems else None
    assert first is not None, "verify passed a log with a deleted stream"
    assert first.where == f"stream {ENVIRONMENT}"
    assert "deleted" in first.what
    assert len(report.problems) == 1, report.problems
    assert (report.streams, report.events) == (3, 15)


async def test_deleted_events_with_the_head_row_left_are_named(owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1", ENVIRONMENT)
    report = await _verify(owner, log)
    assert any(p.where == f"stream {ENVIRONMENT}" for p in report.problems)
    assert report.problems[0].where == f"stream {ENVIRONMENT}"


# --------------------------------------------------------------------------- (e) digests tampered


async def _three_digests(owner, store, log: Log) -> None:
    # `log` already holds digest 1.
    await store.append(ACCOUNT_A, [_event(6, "TokenRefreshed")], 5)
    await create_digest(owner, log.key)
    await store.append(ACCOUNT_B, [_event(6, "TokenRefreshed")], 5)
    await create_digest(owner, log.key)
    assert await owner.fetchval("SELECT count(*) FROM ledger_digests") == 3
    assert (await _verify(owner, log)).ok


async def test_a_deleted_middle_digest_breaks_the_digest_chain(owner, store, log):
    await _three_digests(owner, store, log)
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM ledger_digests WHERE digest_id = 2")
    report = await _verify(owner, log)
    first = report.problems[0] if report.problems else None
    assert first is not None, "verify passed a log with a digest removed"
    assert first.where == "digest 3"
    assert "chain" in first.what
    assert report.digests == 2


async def test_an_altered_digest_body_is_named(owner, store, log):
    await _three_digests(owner, store, log)
    body = await owner.fetchval("SELECT body FROM ledger_digests WHERE digest_id = 2")
    signed = json.loads(body)
    signed["streams"][ACCOUNT_A][0] = 4  # claim the stream was shorter
    async with Tamper(owner) as conn:
        await conn.execute("UPDATE ledger_digests SET body = $1 WHERE digest_id = 2",
                           json.dumps(signed, sort_keys=True, separators=(",", ":")))
    report = await _verify(owner, log)
    assert report.problems[0].where == "digest 2"
    assert "body" in report.problems[0].what


async def test_an_altered_digest_with_a_recomputed_hash_fails_its_signature(owner, store, log):
    import hashlib

    await _three_digests(owner, store, log)
    body = await owner.fetchval("SELECT body FROM ledger_digests WHERE digest_id = 3")
    signed = json.loads(body)
    del signed["streams"][ENVIRONMENT]  # make a later deletion of the stream look legitimate
    new_body = json.dumps(signed, sort_keys=True, separators=(",", ":"))
    async with Tamper(owner) as conn:
        await conn.execute("UPDATE ledger_digests SET body = $1, body_hash = $2 WHERE digest_id = 3",
                           new_body, hashlib.sha256(new_body.encode()).digest())
    report = await _verify(owner, log)
    assert report.problems[0].where == "digest 3"
    assert "signature does not verify" in report.problems[0].what


@pytest.mark.parametrize("body", ["not json at all", "{}", '{"streams": 5}', "[]"])
async def test_a_digest_body_that_is_not_a_digest_is_reported_not_a_crash(owner, store, log, body):
    """Whatever an attacker writes into a digest row, verify must report it as a problem of that
    digest (and go on checking the rest), not stop with an exception."""
    await _three_digests(owner, store, log)
    async with Tamper(owner) as conn:
        await conn.execute("UPDATE ledger_digests SET body = $1 WHERE digest_id = 2", body)
    report = await _verify(owner, log)
    assert not report.ok
    assert report.problems[0].where == "digest 2"
    assert report.digests == 3


async def test_a_truncated_signature_is_named(owner, store, log):
    await _three_digests(owner, store, log)
    async with Tamper(owner) as conn:
        await conn.execute("UPDATE ledger_digests SET signature = substring(signature from 1 for 10) WHERE digest_id = 1")
    report = await _verify(owner, log)
    assert report.problems[0].where == "digest 1"
    assert "signature does not verify" in report.problems[0].what


# --------------------------------------------------------------------------- (f) the wrong signer


async def test_a_digest_signed_by_another_key_is_refused(owner, store):
    built = await build_log(store)
    await create_digest(owner, built.key)
    intruder = load_signing_key(new_key_b64())
    await create_digest(owner, intruder)  # e.g. re-signed after deleting a stream
    report = await verify_log(owner, built.public_key)
    first = report.problems[0] if report.problems else None
    assert first is not None, "verify trusted a digest signed by an unknown key"
    assert first.where == "digest 2"
    assert "key other than" in first.what


async def test_a_log_signed_only_by_another_key_is_refused(owner, store):
    built = await build_log(store)
    await create_digest(owner, load_signing_key(new_key_b64()))
    report = await verify_log(owner, built.public_key)
    assert not report.ok
    assert report.problems[0].where == "digest 1"


async def test_a_forged_digest_hiding_a_deleted_stream_is_refused(owner, store):
    """An attacker without the key deletes a stream, then signs a fresh digest with their own key."""
    built = await build_log(store)
    await create_digest(owner, built.key)
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1", ACCOUNT_B)
        await conn.execute("DELETE FROM stream_heads WHERE stream_id = $1", ACCOUNT_B)
    await create_digest(owner, load_signing_key(new_key_b64()))
    report = await verify_log(owner, built.public_key)
    assert not report.ok
    assert report.problems[0].where == "digest 2"


# --------------------------------------------------------------------------- the CLI


def _cli_env(database_url: str, key_b64: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("LINKLEDGER_")}
    env["LINKLEDGER_DATABASE_URL"] = database_url
    if key_b64:
        env["LINKLEDGER_LEDGER_SIGNING_KEY"] = key_b64
    return env


async def _cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(LINKLEDGER), *args, env=env, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


async def test_cli_verify_exits_0_on_a_clean_log(database_url, log):
    code, out, err = await _cli("verify", env=_cli_env(database_url, log.key_b64))
    assert code == 0, (out, err)
    first = out.splitlines()[0]
    assert first.startswith("verify: ok")
    assert "20 events" in first and "4 streams" in first and "1 digest" in first


async def test_cli_verify_exits_1_naming_the_broken_place(database_url, owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1 AND version = 2", ACCOUNT_A)
    code, out, err = await _cli("verify", env=_cli_env(database_url, log.key_b64))
    assert code == 1, (out, err)
    first = out.splitlines()[0]
    assert "FAILED" in first
    assert f"stream {ACCOUNT_A}" in first and "version 2 missing" in first
    assert "Traceback" not in err


async def test_cli_verify_names_a_deleted_stream(database_url, owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1", INTEGRATION)
        await conn.execute("DELETE FROM stream_heads WHERE stream_id = $1", INTEGRATION)
    code, out, err = await _cli("verify", env=_cli_env(database_url, log.key_b64))
    assert code == 1, (out, err)
    assert f"stream {INTEGRATION}" in out.splitlines()[0]


async def test_cli_verify_json_is_parseable(database_url, owner, log):
    code, out, _ = await _cli("verify", "--json", env=_cli_env(database_url, log.key_b64))
    assert code == 0
    assert json.loads(out) == {"ok": True, "streams": 4, "events": 20, "digests": 1, "problems": []}

    async with Tamper(owner) as conn:
        await conn.execute("UPDATE events SET data = replace(data, 'Zoë', 'Zoe') WHERE stream_id = $1 AND version = 5",
                           ENVIRONMENT)
    code, out, _ = await _cli("verify", "--json", env=_cli_env(database_url, log.key_b64))
    assert code == 1
    report = json.loads(out)
    assert report["ok"] is False
    assert report["problems"][0]["where"] == f"stream {ENVIRONMENT}, version 5"
    assert "hash does not match" in report["problems"][0]["what"]


async def test_cli_verify_names_a_mangled_digest_without_a_traceback(database_url, owner, log):
    async with Tamper(owner) as conn:
        await conn.execute("UPDATE ledger_digests SET body = 'x' WHERE digest_id = 1")
    code, out, err = await _cli("verify", env=_cli_env(database_url, log.key_b64))
    assert code == 1, (out, err)
    assert "Traceback" not in err
    assert out.splitlines() and "digest 1" in out.splitlines()[0]


async def test_cli_verify_refuses_digests_from_an_untrusted_key(database_url, log):
    code, out, _ = await _cli("verify", env=_cli_env(database_url, new_key_b64()))
    assert code == 1
    assert "digest 1" in out.splitlines()[0]


async def test_cli_digest_stores_a_signed_digest(database_url, owner, store):
    built = await build_log(store)
    code, out, err = await _cli("digest", env=_cli_env(database_url, built.key_b64))
    assert code == 0, (out, err)
    printed = json.loads(out.strip().splitlines()[-1])
    assert isinstance(printed["digest_id"], int)
    assert printed["stream_count"] == 4
    row = await owner.fetchrow("SELECT stream_count, public_key FROM ledger_digests WHERE digest_id = $1",
                               printed["digest_id"])
    assert row is not None and row["stream_count"] == 4
    from events.integrity import encode_key, public_bytes

    assert bytes(row["public_key"]) == public_bytes(built.public_key)
    assert printed["public_key"] == encode_key(public_bytes(built.public_key))
    report = await verify_log(owner, built.public_key)
    assert report.ok and report.digests == 1

    # The digest it stored is what catches a later truncation.
    async with Tamper(owner) as conn:
        await conn.execute("DELETE FROM events WHERE stream_id = $1", ACCOUNT_B)
        await conn.execute("DELETE FROM stream_heads WHERE stream_id = $1", ACCOUNT_B)
    assert (await verify_log(owner, built.public_key)).problems[0].where == f"stream {ACCOUNT_B}"


async def test_cli_digest_without_a_key_exits_2_naming_it(database_url):
    code, out, err = await _cli("digest", env=_cli_env(database_url, None))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "LINKLEDGER_LEDGER_SIGNING_KEY" in err
