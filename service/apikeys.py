"""API keys: a typed prefix, 256 random bits, shown once; only a hash is stored."""

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Literal

import asyncpg

Role = Literal["admin", "operator", "service", "auditor"]
ROLES: tuple[Role, ...] = ("admin", "operator", "service", "auditor")
ALL_ENVIRONMENTS = "*"
_PREFIX = "llk"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    role: Role
    environments: tuple[str, ...]
    name: str

    @property
    def actor(self) -> str:
        return f"key:{self.key_id}"

    def may_access(self, environment: str) -> bool:
        return ALL_ENVIRONMENTS in self.environments or environment in self.environments


@dataclass(frozen=True)
class IssuedKey:
    key: ApiKey
    secret: str  # the whole key, e.g. "llk_admin_key_3f9a..._<random>": shown once, never stored


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _public_id(secret: str) -> str | None:
    parts = secret.split("_")
    if len(parts) != 5 or parts[0] != _PREFIX or parts[1] not in ROLES:
        return None
    return f"{parts[2]}_{parts[3]}"


async def create_key(
    conn: asyncpg.Connection | asyncpg.Pool, *, role: Role, environments: tuple[str, ...], name: str, created_by: str
) -> IssuedKey:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not environments:
        raise ValueError("a key needs at least one environment (or * for all)")
    key_id = f"key_{secrets.token_hex(6)}"
    secret = f"{_PREFIX}_{role}_{key_id}_{secrets.token_urlsafe(32).replace('_', 'x').replace('-', 'y')}"
    await conn.execute(
        "INSERT INTO api_keys (key_id, secret_hash, role, environments, name, created_by) VALUES ($1, $2, $3, $4, $5, $6)",
        key_id, _hash(secret), role, list(environments), name, created_by,
    )
    return IssuedKey(ApiKey(key_id, role, tuple(environments), name), secret)


# Authenticated keys are remembered briefly, so a token read costs no extra query; a revocation
# takes effect at once in the revoking process and within this many seconds everywhere else.
CACHE_SECONDS = 10.0
_CACHE_SIZE = 10_000
_cache: dict[bytes, tuple[ApiKey, float]] = {}
clock = time.monotonic  # replaceable by tests


async def authenticate(pool: asyncpg.Pool, secret: str) -> ApiKey | None:
    """The key a bearer secret belongs to, or None (unknown, malformed or revoked)."""
    if not secret:
        return None
    digest = _hash(secret)
    cached = _cache.get(digest)
    if cached is not None and cached[1] > clock():
        return cached[0]  # only well-formed keys are ever cached
    if _public_id(secret) is None:
        return None
    row = await pool.fetchrow(
        "SELECT key_id, role, environments, name FROM api_keys WHERE secret_hash = $1 AND revoked_at IS NULL",
        digest,
    )
    if row is None:
        _cache.pop(digest, None)
        return None
    key = ApiKey(row["key_id"], row["role"], tuple(row["environments"]), row["name"])
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[digest] = (key, clock() + CACHE_SECONDS)
    return key


async def revoke_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> bool:
    status = await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id)
    for digest in [d for d, (key, _) in _cache.items() if key.key_id == key_id]:
        _cache.pop(digest, None)
    return status.endswith(" 1")


async def list_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[dict]:
    rows = await conn.fetch(
        "SELECT key_id, role, environments, name, created_at, created_by, revoked_at FROM api_keys ORDER BY created_at"
    )
    return [dict(r) for r in rows]
