"""The token read's hot path: one single-row statement per read, and no re-parsing of an account
whose stream has not moved since this process last read it.

Each read asks for the head's version; the snapshot and the latest secret-carrying event come back
only when the version differs from the one this process holds (the lateral read is skipped
otherwise). The parsed state and the ciphertext are kept per account, never the plaintext: every
read decrypts with the cached data key, so a shredded key stops serving within the data-key
cache's time-to-live, as everywhere else.
"""

import uuid
from dataclasses import dataclass, field
from typing import Any

from events.hashing import format_instant
from service.crypto.envelope import decrypt_with, event_aad
from service.domain.account import AccountState
from service.domain.identity import account_stream
from service.handlers.accounts import AccountNotFound, load_existing_account
from service.handlers.uow import UnitOfWork

_READ = """
SELECT h.version, h.snapshot_version, CASE WHEN h.version = $2 THEN NULL ELSE h.snapshot END AS snapshot,
       s.event_id, s.secret
  FROM stream_heads h
  LEFT JOIN LATERAL (SELECT event_id, secret FROM events
                      WHERE h.version <> $2 AND stream_id = h.stream_id AND secret IS NOT NULL
                      ORDER BY version DESC LIMIT 1) s ON true
 WHERE h.stream_id = $1
"""

CACHE_SIZE = 50_000  # accounts; a parsed state is a few KiB at most


def token_fields(state: AccountState) -> dict[str, Any]:
    """The non-secret part of a token answer."""
    return {
        "account_id": str(state.account_id),
        "authentication_method": state.authentication_method,
        "token_type": state.token_type,
        "expires_at": format_instant(state.expires_at) if state.expires_at else None,
        "context": state.context,
        "status": state.status,
    }


@dataclass
class _Held:
    version: int
    state: AccountState
    event_id: uuid.UUID
    ciphertext: bytes = field(repr=False)
    _fields: dict[str, Any] | None = None
    stream: str = field(init=False)
    aad: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # What every read of this version decrypts with, worked out once.
        self.stream = account_stream(self.state.account_id)
        self.aad = event_aad(self.stream, self.event_id)

    @property
    def fields(self) -> dict[str, Any]:
        """Made at the first read (a refresh holds states that may never be read here)."""
        if self._fields is None:
            self._fields = token_fields(self.state)
        return self._fields


class TokenReads:
    """This process's parsed accounts, keyed by stream version. The refresher shares it: what it
    appends it holds at once, so the next read (or refresh) of that account parses nothing."""

    def __init__(self, uow: UnitOfWork, size: int = CACHE_SIZE):
        self._uow = uow
        self._size = size
        self._held: dict[uuid.UUID, _Held] = {}

    def held_version(self, account_id: uuid.UUID) -> int:
        held = self._held.get(account_id)
        return held.version if held is not None else -1

    def held(self, account_id: uuid.UUID, version: int) -> "_Held | None":
        held = self._held.get(account_id)
        return held if held is not None and held.version == version else None

    def hold(self, state: AccountState, event_id: uuid.UUID, ciphertext: bytes) -> "_Held":
        """Keep `state` (as of its version) with the ciphertext of its current secrets."""
        held = _Held(state.version, state, event_id, ciphertext)
        if state.account_id not in self._held and len(self._held) >= self._size:
            del self._held[next(iter(self._held))]  # the oldest entry
        self._held[state.account_id] = held
        return held

    def hold_row(self, account_id: uuid.UUID, row) -> "_Held | None":
        """What a head row read with a held version says: the held entry when the version is the
        same, else the row's snapshot and secret, now held; None when the snapshot is behind."""
        held = self.held(account_id, row["version"])
        if held is not None:
            return held
        if row["snapshot"] is None or row["snapshot_version"] != row["version"] or row["secret"] is None:
            return None
        state = AccountState.model_validate_json(row["snapshot"])
        return self.hold(state, row["event_id"], bytes(row["secret"]))

    async def secrets(self, held: "_Held") -> dict[str, Any] | None:
        """The held account's current secrets, decrypted now; None once it is deleted (its key is shredded)."""
        if held.state.status == "deleted":
            return None
        data_key = await self._uow.data_keys.get(held.stream)
        return decrypt_with(data_key.cipher, held.ciphertext, held.aad)

    async def read(self, account_id: uuid.UUID) -> tuple[AccountState, dict[str, Any] | None, dict[str, Any]]:
        """(state, current secrets, the answer's non-secret fields). Secrets are None for a deleted
        account, or when the head snapshot is behind (the caller then reads them the ordinary way)."""
        held = self._held.get(account_id)
        if held is None:
            row = await self._uow.pool.fetchrow(_READ, account_stream(account_id), -1)
        else:
            row = await self._uow.pool.fetchrow(_READ, held.stream, held.version)
        if row is None:
            self._held.pop(account_id, None)
            raise AccountNotFound(f"account {account_id} does not exist", field="account_id")
        if held is not None and held.version == row["version"]:  # the usual case: nothing new to parse
            return held.state, await self.secrets(held), held.fields
        held = self.hold_row(account_id, row)
        if held is None:
            state = await load_existing_account(self._uow, account_id)
            return state, None, token_fields(state)
        return held.state, await self.secrets(held), held.fields
