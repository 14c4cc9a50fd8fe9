"""Data keys: one AES-256 key per owner (a stream id), stored wrapped under a KEK in `data_keys`.

- Events carry the owner's `key_id`; their secret part is encrypted under the owner's key
  (service.crypto.envelope) with associated data binding it to the stream and event.
- Rotation rewraps the rows here under the keyring's primary KEK; no event is rewritten.
- Shredding nulls the wrapped key: the owner's secrets in the log become unreadable for good, the
  hash chains still verify (they hash the ciphertext), and no new key is ever made for the owner.
  Old row versions (until VACUUM) and backups still hold the wrapped bytes under the KEK of the
  time; they become unreadable once that KEK is rotated out and removed from the keyring.

Unwrapped keys are cached in-process (LRU, bounded, with a time-to-live so that a key shredded by
another replica stops being served from this one's cache within `cache_ttl` seconds).
"""

import asyncio
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Iterable

import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events.batching import Coalescer
from events.store import Companion
from service.crypto.keyring import KEY_BYTES, Keyring, KeyringError, UnwrapError

_ATTEMPTS = 3  # for the (astronomically rare) key_id collision, or a deadlock between bulk creators


def new_key_id() -> str:
    return "dk_" + os.urandom(8).hex()


class DataKeyError(Exception):
    """A data key cannot be had. Messages name owners and key ids, never key material."""


class MissingKeyError(DataKeyError, LookupError):
    def __init__(self, owner: str):
        super().__init__(f"data key: {owner} has no data key")
        self.owner = owner


class KeyShreddedError(DataKeyError):
    """The owner's key was destroyed (crypto-shredding): its secrets are gone and no new key is made."""

    def __init__(self, owners: str | Iterable[str], key_id: str | None = None):
        self.owners = [owners] if isinstance(owners, str) else sorted(owners)
        self.owner = self.owners[0]
        self.key_id = key_id
        if len(self.owners) == 1:
            which = f" ({key_id})" if key_id else ""
            message = f"data key: the key of {self.owner}{which} was shredded"
        else:
            shown = ", ".join(self.owners[:5]) + (", ..." if len(self.owners) > 5 else "")
            message = f"data key: the keys of {len(self.owners)} owners were shredded: {shown}"
        super().__init__(message)


@dataclass(frozen=True)
class DataKey:
    owner: str
    key_id: str
    key: bytes = field(repr=False)

    @cached_property
    def cipher(self) -> AESGCM:
        """The key's AES-GCM cipher, made once per cached key rather than once per decryption."""
        return AESGCM(self.key)


def _check_owner(owner: str) -> str:
    if not isinstance(owner, str) or not 1 <= len(owner) <= 200:
        raise ValueError("data key: an owner is a stream id of 1 to 200 characters")
    return owner


_SELECT = "SELECT owner, key_id, kek_id, wrapped, shredded_at FROM data_keys"
# Several owners' keys, a probe per owner (see the note on lookups in events.store).
_SELECT_MANY = (
    "SELECT d.* FROM unnest($1::text[]) AS k(owner)"
    f" CROSS JOIN LATERAL ({_SELECT} WHERE owner = k.owner LIMIT 1) AS d"
)

# A new key is committed without waiting for the WAL flush: it is only ever used by an event that
# is appended after it, and that append's own flush writes the key's WAL record too (WAL is
# flushed in order), so a key is durable whenever anything encrypted under it is. A key lost in a
# crash before any such event simply never mattered. One fsync per new account instead of two.
_INSERT_MANY = """
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO data_keys (owner, key_id, kek_id, wrapped)
SELECT k.owner, k.key_id, k.kek_id, k.wrapped
  FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[]) AS k(owner, key_id, kek_id, wrapped), relaxed
ON CONFLICT DO NOTHING
RETURNING owner
"""

# A new stream's key, written by the statement that creates the stream (events.store.Companion):
# the stream is created only if this row is, so no secret is ever stored under a key that is not.
_KEY_WITH_STREAM = (
    "INSERT INTO data_keys (owner, key_id, kek_id, wrapped) SELECT stream_id, key_id, kek_id, wrapped FROM {rows}"
    " ON CONFLICT DO NOTHING RETURNING owner AS stream_id"
)
_KEY_COLUMNS = (("key_id", "text"), ("kek_id", "text"), ("wrapped", "bytea"))

_SHRED = """
INSERT INTO data_keys (owner, key_id, kek_id, wrapped, shredded_at) VALUES ($1, $2, NULL, NULL, now())
ON CONFLICT (owner) DO UPDATE
  SET kek_id = NULL, wrapped = NULL, shredded_at = coalesce(data_keys.shredded_at, now())
RETURNING key_id, (xmax = 0) AS tombstone
"""

_REWRAP = """
WITH moved AS (
  UPDATE data_keys d SET kek_id = $1, wrapped = u.wrapped, rotated_at = now()
    FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(owner, old_kek, wrapped)
   WHERE d.owner = u.owner AND d.kek_id = u.old_kek AND d.shredded_at IS NULL
  RETURNING 1
)
SELECT count(*) FROM moved
"""


class DataKeys:
    def __init__(self, pool: asyncpg.Pool, keyring: Keyring, cache_size: int = 10000, *, cache_ttl: float | None = 300.0):
        if cache_size < 0:
            raise ValueError("data key: cache_size must be >= 0")
        self._pool = pool
        self._keyring = keyring
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._cache: OrderedDict[str, tuple[DataKey, float]] = OrderedDict()
        self._shreds = 0  # bumped by every shred: a read that overlapped one does not cache
        # Concurrent creations of keys for new owners go in one INSERT; an owner it could not
        # insert (it has a key already) is read the ordinary way.
        self._creator = Coalescer(self._insert_new, alone_on=(asyncpg.PostgresError, OSError, asyncio.TimeoutError))

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    # -- cache ------------------------------------------------------------------------------------

    def _cached(self, owner: str) -> DataKey | None:
        entry = self._cache.get(owner)
        if entry is None:
            return None
        key, loaded = entry
        if self._cache_ttl is not None and time.monotonic() - loaded > self._cache_ttl:
            del self._cache[owner]
            return None
        self._cache.move_to_end(owner)
        return key

    def _remember(self, key: DataKey) -> None:
        if self._cache_size == 0:
            return
        self._cache[key.owner] = (key, time.monotonic())
        self._cache.move_to_end(key.owner)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def forget(self, owner: str) -> None:
        """Drop an owner's key from this process's cache (e.g. on a KeyShredded event from another replica)."""
        self._cache.pop(owner, None)

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cached_count(self) -> int:
        return len(self._cache)

    # -- reading ----------------------------------------------------------------------------------

    def _from_row(self, row: asyncpg.Record, shreds_before: int) -> DataKey:
        if row["shredded_at"] is not None:
            raise KeyShreddedError(row["owner"], row["key_id"])
        try:
            key = self._keyring.unwrap(row["kek_id"], row["wrapped"])
        except UnwrapError as exc:
            raise UnwrapError(f"{exc} (data key of {row['owner']})") from None
        data_key = DataKey(row["owner"], row["key_id"], key)
        if self._shreds == shreds_before:
            self._remember(data_key)
        return data_key

    async def get(self, owner: str) -> DataKey:
        """The owner's key; KeyShreddedError if it was destroyed, MissingKeyError if there never was one."""
        cached = self._cached(_check_owner(owner))
        if cached is not None:
            return cached
        shreds = self._shreds
        row = await self._pool.fetchrow(f"{_SELECT} WHERE owner = $1", owner)
        if row is None:
            raise MissingKeyError(owner)
        return self._from_row(row, shreds)

    async def get_or_create(self, owner: str, *, likely_new: bool = False) -> DataKey:
        """The owner's key, made now if it has none. Every concurrent caller, in any process, gets the same key.

        likely_new: the caller knows the owner is new (e.g. its stream does not exist), so the
        insert is tried first and the read only on a conflict.
        """
        cached = self._cached(_check_owner(owner))
        if cached is not None:
            return cached
        shreds = self._shreds
        if likely_new:
            created = await self._creator.submit(owner, owner)
            if created is not None:
                return created
        row = await self._pool.fetchrow(f"{_SELECT} WHERE owner = $1", owner)
        for _ in range(_ATTEMPTS):
            if row is not None:
                return self._from_row(row, shreds)
            key, key_id = os.urandom(KEY_BYTES), new_key_id()
            kek_id, wrapped = self._keyring.wrap(key)
            inserted = await self._pool.fetch(_INSERT_MANY, [owner], [key_id], [kek_id], [wrapped])
            if inserted:
                data_key = DataKey(owner, key_id, key)
                self._remember(data_key)
                return data_key
            # Someone else's key won the race (or, once in 2^64, our key_id was taken): read theirs.
            row = await self._pool.fetchrow(f"{_SELECT} WHERE owner = $1", owner)
        if row is not None:
            return self._from_row(row, shreds)
        raise DataKeyError(f"data key: could not create a key for {owner}")

    def new_key(self, owner: str) -> tuple[DataKey, Companion]:
        """A fresh key for a stream about to be created, not stored yet: the companion stores it
        with the stream, and gates it (an owner with a key already gets no stream that way; it
        takes the ordinary path, `get_or_create`). Call `created` once the stream is."""
        key = DataKey(_check_owner(owner), new_key_id(), os.urandom(KEY_BYTES))
        kek_id, wrapped = self._keyring.wrap(key.key)
        return key, Companion(_KEY_WITH_STREAM, _KEY_COLUMNS, (key.key_id, kek_id, wrapped), gate=True)

    def created(self, key: DataKey) -> None:
        """A key from `new_key` is stored now (its stream was created)."""
        self._remember(key)

    async def _insert_new(self, owners: list[str]) -> dict[str, DataKey]:
        """Fresh keys for the owners that have none; the others are left out."""
        owners = sorted(owners)  # row locks in one order across concurrent batches: no deadlocks
        made = {owner: DataKey(owner, new_key_id(), os.urandom(KEY_BYTES)) for owner in owners}
        wrapped = [self._keyring.wrap(made[owner].key) for owner in owners]
        rows = await self._pool.fetch(
            _INSERT_MANY, owners, [made[owner].key_id for owner in owners], [w[0] for w in wrapped], [w[1] for w in wrapped]
        )
        inserted = {row["owner"]: made[row["owner"]] for row in rows}
        for key in inserted.values():
            self._remember(key)
        return inserted

    async def create_many(self, owners: list[str]) -> dict[str, DataKey]:
        """Keys for many owners at once (imports): one INSERT for the missing ones, one SELECT for the rest.

        Raises KeyShreddedError (with `.owners`) if any owner's key was shredded; the others' keys
        exist by then, so a caller can drop those owners and call again.
        """
        wanted = list(dict.fromkeys(_check_owner(o) for o in owners))
        result: dict[str, DataKey] = {}
        pending = []
        for owner in wanted:
            cached = self._cached(owner)
            if cached is not None:
                result[owner] = cached
            else:
                pending.append(owner)
        pending.sort()  # every bulk creator takes row locks in one order: no deadlocks between them
        shredded: dict[str, str] = {}
        shreds = self._shreds
        for attempt in range(_ATTEMPTS):
            if not pending:
                break
            made = {owner: (new_key_id(), os.urandom(KEY_BYTES)) for owner in pending}
            columns: tuple[list, list, list, list] = ([], [], [], [])
            for owner in pending:
                key_id, key = made[owner]
                kek_id, wrapped = self._keyring.wrap(key)
                for column, value in zip(columns, (owner, key_id, kek_id, wrapped)):
                    column.append(value)
            try:
                rows = await self._pool.fetch(_INSERT_MANY, *columns)
            except asyncpg.DeadlockDetectedError:
                if attempt == _ATTEMPTS - 1:
                    raise
                continue
            inserted = {r["owner"] for r in rows}
            for owner in inserted:
                key_id, key = made[owner]
                result[owner] = DataKey(owner, key_id, key)
                self._remember(result[owner])
            existing = [o for o in pending if o not in inserted]
            if existing:
                for row in await self._pool.fetch(_SELECT_MANY, existing):
                    if row["shredded_at"] is not None:
                        shredded[row["owner"]] = row["key_id"]
                    else:
                        result[row["owner"]] = self._from_row(row, shreds)
            pending = [o for o in existing if o not in result and o not in shredded]
        if shredded:
            raise KeyShreddedError(shredded)
        if pending:
            raise DataKeyError(f"data key: could not create keys for {len(pending)} owners (first: {pending[0]})")
        return {owner: result[owner] for owner in wanted}

    # -- shredding --------------------------------------------------------------------------------

    async def shred(self, owner: str) -> str | None:
        """Destroy the owner's key for good; its key_id, or None if it never had one.

        An owner without a key gets a shredded tombstone, so no key is made for it later either.
        """
        _check_owner(owner)
        self._shreds += 1
        self._cache.pop(owner, None)
        for attempt in range(_ATTEMPTS):
            try:
                row = await self._pool.fetchrow(_SHRED, owner, new_key_id())
                break
            except asyncpg.UniqueViolationError:  # the tombstone's fresh key_id was taken
                if attempt == _ATTEMPTS - 1:
                    raise
        self._shreds += 1
        self._cache.pop(owner, None)
        return None if row["tombstone"] else row["key_id"]

    # -- rotation ---------------------------------------------------------------------------------

    async def rotate(self, progress: Callable[[int, int], None] | None = None, batch: int = 500) -> int:
        """Rewrap every live data key that is not under the primary KEK; returns how many were rewrapped.

        Deploy the keyring with the new primary to every replica first (so no new key is made under
        the old one), then rotate; afterwards the old KEK can be removed. Never touches events.
        """
        if batch < 1:
            raise ValueError("data key: batch must be >= 1")
        primary = self._keyring.primary
        counts = await self._pool.fetch(
            "SELECT kek_id, count(*) AS n FROM data_keys WHERE shredded_at IS NULL AND kek_id <> $1 GROUP BY kek_id",
            primary,
        )
        missing = sorted(r["kek_id"] for r in counts if r["kek_id"] not in self._keyring)
        if missing:
            n = sum(r["n"] for r in counts if r["kek_id"] in missing)
            raise KeyringError(
                f"keyring: {n} data keys are wrapped under KEK {', '.join(missing)}, which is not loaded;"
                " add it to the keyring to rotate them"
            )
        total = sum(r["n"] for r in counts)
        if progress:
            progress(0, total)
        done = rotated = 0
        after = ""
        while True:
            rows = await self._pool.fetch(
                "SELECT owner, kek_id, wrapped FROM data_keys"
                " WHERE shredded_at IS NULL AND kek_id <> $1 AND owner > $2 ORDER BY owner LIMIT $3",
                primary,
                after,
                batch,
            )
            if not rows:
                break
            owners, old_keks, rewrapped = [], [], []
            for row in rows:
                try:
                    key = self._keyring.unwrap(row["kek_id"], row["wrapped"])
                except UnwrapError as exc:
                    raise UnwrapError(f"{exc} (data key of {row['owner']})") from None
                owners.append(row["owner"])
                old_keks.append(row["kek_id"])
                rewrapped.append(self._keyring.wrap(key)[1])
            # Only rows still under the KEK read and not shredded meanwhile are moved.
            rotated += await self._pool.fetchval(_REWRAP, primary, owners, old_keks, rewrapped)
            done += len(rows)
            after = rows[-1]["owner"]
            if progress:
                progress(min(done, total), total)
            await asyncio.sleep(0)
        if progress and done < total:
            progress(total, total)  # the rest were shredded or rotated by someone else meanwhile
        return rotated
