"""Integrity of the log: recompute every hash chain, sign and check ledger digests.

A chain proves that no event inside a stream was altered or removed from the middle. It cannot
show that a whole stream or the tail of one was deleted; the signed digests can (invariant 5):
each one signs the head (version, hash) of every stream at an instant and the previous digest's
hash, so verify knows what must still be there.
"""

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import AsyncIterator

import asyncpg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from events.hashing import GENESIS_HASH, body_hash, chain_hash, format_instant, header_bytes


@dataclass(frozen=True)
class Problem:
    where: str  # "stream account-..., version 3" or "digest 7"
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    streams: int = 0
    events: int = 0
    digests: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "streams": self.streams,
            "events": self.events,
            "digests": self.digests,
            "problems": [{"where": p.where, "what": p.what} for p in self.problems],
        }


def load_signing_key(encoded: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from base64 (standard or url-safe) of its 32-byte seed."""
    raw = base64.urlsafe_b64decode(encoded.replace("+", "-").replace("/", "_") + "=" * (-len(encoded) % 4))
    if len(raw) != 32:
        raise ValueError("an Ed25519 signing key is 32 bytes, base64-encoded")
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_public_key(encoded: str) -> Ed25519PublicKey:
    raw = base64.urlsafe_b64decode(encoded.replace("+", "-").replace("/", "_") + "=" * (-len(encoded) % 4))
    if len(raw) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes, base64-encoded")
    return Ed25519PublicKey.from_public_bytes(raw)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True)
class Digest:
    digest_id: int
    created_at: datetime
    stream_count: int
    last_position: int | None
    body_hash: bytes
    prev_hash: bytes
    signature: bytes
    public_key: bytes

    def as_dict(self) -> dict:
        return {
            "digest_id": self.digest_id,
            "created_at": format_instant(self.created_at),
            "stream_count": self.stream_count,
            "last_position": self.last_position,
            "body_hash": self.body_hash.hex(),
            "prev_hash": self.prev_hash.hex(),
            "signature": encode_key(self.signature),
            "public_key": encode_key(self.public_key),
        }


# Digests form a chain, so two signers at once would fork it: one at a time, across replicas.
_DIGEST_LOCK_KEY = 0x6C6C_6467


async def create_digest(conn: asyncpg.Connection, key: Ed25519PrivateKey) -> Digest:
    """Sign the current head of every stream, chained to the previous digest."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _DIGEST_LOCK_KEY)
        # Read committed, after the lock: the previous digest is the latest one, whoever wrote it.
        # Heads come from the events themselves, located through the head rows.
        heads = await conn.fetch(
            "SELECT e.stream_id, e.version, e.hash FROM stream_heads h"
            " JOIN events e ON e.stream_id = h.stream_id AND e.version = h.version ORDER BY e.stream_id"
        )
        last_position = await conn.fetchval("SELECT max(position) FROM events")
        previous = await conn.fetchval("SELECT body_hash FROM ledger_digests ORDER BY digest_id DESC LIMIT 1")
        digest = await _insert_digest(conn, key, heads, last_position, previous)
    return digest


async def _insert_digest(conn, key, heads, last_position, previous) -> Digest:
    prev_hash = bytes(previous) if previous is not None else GENESIS_HASH
    created_at = datetime.now(timezone.utc)
    body = json.dumps(
        {
            "created_at": format_instant(created_at),
            "last_position": last_position,
            "prev_hash": prev_hash.hex(),
            "streams": {r["stream_id"]: [r["version"], bytes(r["hash"]).hex()] for r in heads},
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    digest_hash = hashlib.sha256(body.encode()).digest()
    signature = key.sign(digest_hash)
    pub = public_bytes(key.public_key())
    row = await conn.fetchrow(
        "INSERT INTO ledger_digests (created_at, body, body_hash, prev_hash, signature, public_key,"
        " stream_count, last_position) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING digest_id",
        created_at, body, digest_hash, prev_hash, signature, pub, len(heads), last_position,
    )
    return Digest(row["digest_id"], created_at, len(heads), last_position, digest_hash, prev_hash, signature, pub)


async def list_digests(conn: asyncpg.Connection, limit: int = 100, before: int | None = None) -> list[Digest]:
    rows = await conn.fetch(
        "SELECT digest_id, created_at, stream_count, last_position, body_hash, prev_hash, signature, public_key"
        " FROM ledger_digests WHERE ($2::bigint IS NULL OR digest_id < $2) ORDER BY digest_id DESC LIMIT $1",
        limit, before,
    )
    return [
        Digest(r["digest_id"], r["created_at"], r["stream_count"], r["last_position"], bytes(r["body_hash"]),
               bytes(r["prev_hash"]), bytes(r["signature"]), bytes(r["public_key"]))
        for r in rows
    ]


def _parse_digest_body(body: str) -> dict[str, tuple[int, str]] | None:
    """The signed heads of a digest body, or None when the body is not a digest."""
    try:
        parsed = json.loads(body)
        streams = parsed["streams"]
        heads = {}
        for stream_id, (version, hash_hex) in streams.items():
            if not isinstance(version, int) or not isinstance(hash_hex, str) or len(bytes.fromhex(hash_hex)) != 32:
                return None
            heads[stream_id] = (version, hash_hex)
        if not isinstance(parsed.get("prev_hash"), str):
            return None
        return heads
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


async def _check_digests(
    conn: asyncpg.Connection, public_key: Ed25519PublicKey | None, report: VerifyReport
) -> dict[str, tuple[int, str]]:
    """Check every digest's signature and the chain between them; return the latest good one's heads."""
    expected_prev = GENESIS_HASH
    latest: dict[str, tuple[int, str]] = {}
    trusted = public_bytes(public_key) if public_key else None
    async for row in _cursor(conn, "SELECT digest_id, body, body_hash, prev_hash, signature, public_key"
                                   " FROM ledger_digests ORDER BY digest_id"):
        report.digests += 1
        where = f"digest {row['digest_id']}"
        body = row["body"]
        digest_hash = hashlib.sha256(body.encode()).digest()
        heads = _parse_digest_body(body)
        if heads is None:
            report.problems.append(Problem(where, "body is not a valid digest"))
        if digest_hash != bytes(row["body_hash"]):
            report.problems.append(Problem(where, "body does not match its stored hash"))
        body_prev = json.loads(body).get("prev_hash") if heads is not None else None
        if bytes(row["prev_hash"]) != expected_prev or (heads is not None and body_prev != expected_prev.hex()):
            report.problems.append(Problem(where, "does not chain to the previous digest (a digest was removed or altered)"))
        signer = bytes(row["public_key"])
        if trusted is not None and signer != trusted:
            report.problems.append(Problem(where, "signed by a key other than the configured ledger key"))
        try:
            Ed25519PublicKey.from_public_bytes(trusted or signer).verify(bytes(row["signature"]), digest_hash)
        except (InvalidSignature, ValueError):
            report.problems.append(Problem(where, "signature does not verify"))
        expected_prev = digest_hash
        if heads is not None:
            latest = heads
    return latest


async def _cursor(conn: asyncpg.Connection, query: str, *args) -> AsyncIterator[asyncpg.Record]:
    async for row in conn.cursor(query, *args, prefetch=2000):
        yield row


async def verify_log(conn: asyncpg.Connection, public_key: Ed25519PublicKey | None = None) -> VerifyReport:
    """Recompute every chain, compare heads, and check the digests. Problems are in log order."""
    report = VerifyReport()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        signed_heads = await _check_digests(conn, public_key, report)
        heads = {r["stream_id"]: (r["version"], bytes(r["last_hash"])) for r in await conn.fetch(
            "SELECT stream_id, version, last_hash FROM stream_heads")}
        seen_streams: dict[str, int] = {}

        def close_stream(stream_id: str, last_version: int, last_hash: bytes) -> None:
            head = heads.get(stream_id)
            if head is None:
                report.problems.append(Problem(f"stream {stream_id}", "has events but no head row"))
            elif head != (last_version, last_hash):
                report.problems.append(Problem(
                    f"stream {stream_id}",
                    f"head row says version {head[0]}, the events end at version {last_version}"
                    + (" (tail deleted?)" if head[0] > last_version else ""),
                ))

        stream_id, version, prev = None, 0, GENESIS_HASH
        async for r in _cursor(conn, "SELECT event_id, stream_id, version, type, schema_version, data, secret, key_id,"
                                     " occurred_at, actor, correlation_id, causation_id, prev_hash, hash"
                                     " FROM events ORDER BY stream_id, version"):
            if r["stream_id"] != stream_id:
                if stream_id is not None:
                    close_stream(stream_id, version, prev)
                    seen_streams[stream_id] = version
                stream_id, version, prev = r["stream_id"], 0, GENESIS_HASH
                report.streams += 1
            report.events += 1
            where = f"stream {stream_id}, version {r['version']}"
            if r["version"] > version + 1:
                missing = f"{version + 1}" if r["version"] == version + 2 else f"{version + 1}..{r['version'] - 1}"
                report.problems.append(Problem(where, f"version {missing} missing (deleted?)"))
            if bytes(r["prev_hash"]) != prev:
                report.problems.append(Problem(where, "prev_hash does not match the previous event's hash"))
            header = header_bytes(
                event_id=r["event_id"], stream_id=stream_id, version=r["version"], type=r["type"],
                schema_version=r["schema_version"], occurred_at=r["occurred_at"], actor=r["actor"],
                correlation_id=r["correlation_id"], causation_id=r["causation_id"], key_id=r["key_id"],
            )
            secret = bytes(r["secret"]) if r["secret"] is not None else None
            recomputed = chain_hash(bytes(r["prev_hash"]), body_hash(header, r["data"], secret))
            if recomputed != bytes(r["hash"]):
                report.problems.append(Problem(where, "hash does not match the event's contents (data, header or secret altered)"))
            signed = signed_heads.get(stream_id)
            if signed and signed[0] == r["version"] and signed[1] != bytes(r["hash"]).hex():
                report.problems.append(Problem(where, "differs from the event the latest digest signed"))
            version, prev = r["version"], bytes(r["hash"])
        if stream_id is not None:
            close_stream(stream_id, version, prev)
            seen_streams[stream_id] = version

        for orphan in sorted(set(heads) - set(seen_streams)):
            report.problems.append(Problem(f"stream {orphan}", f"head row says version {heads[orphan][0]} but the stream has no events"))
        for signed_stream, (signed_version, _) in sorted(signed_heads.items()):
            have = seen_streams.get(signed_stream)
            if have is None:
                report.problems.append(Problem(f"stream {signed_stream}", f"signed at version {signed_version} by the latest digest, but deleted"))
            elif have < signed_version:
                report.problems.append(Problem(f"stream {signed_stream}", f"signed at version {signed_version} by the latest digest, but ends at version {have} (tail deleted)"))
    return report
