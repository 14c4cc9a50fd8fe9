"""Key-encryption keys (KEKs): the keys that wrap each owner's data key.

A keyring is JSON: {"primary": "kek-2026-11", "keys": {"kek-2026-11": "<base64 32 bytes>", ...}}.
New data keys are wrapped under the primary; older KEKs stay loaded until `linkledger keys rotate`
has rewrapped every data key under the primary, then they can be removed.

Nothing here ever puts key material into an error message or a repr: errors name KEK ids only.
"""

import base64
import binascii
import json
import os
import re
from datetime import datetime, timezone

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
# KEK ids travel in errors, logs and the data_keys table, so they are short and printable.
_KEK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
_BASE64 = re.compile(r"[A-Za-z0-9+/\-_]*={0,2}")


class KeyringError(ValueError):
    """The keyring is unusable or a KEK is missing. The message is one line without key material."""


class UnwrapError(KeyringError):
    """A wrapped data key does not open under the KEK it names (wrong key or altered bytes)."""


def _decode_key(kek_id: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise KeyringError(f'keyring: key "{kek_id}" must be a base64 string')
    text = text.strip()
    if not _BASE64.fullmatch(text):
        raise KeyringError(f'keyring: key "{kek_id}" is not base64 (standard or url-safe)')
    normalized = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(normalized + "=" * (-len(normalized) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyringError(f'keyring: key "{kek_id}" is not base64 (standard or url-safe)') from None
    if len(raw) != KEY_BYTES:
        raise KeyringError(f'keyring: key "{kek_id}" is {len(raw)} bytes, expected {KEY_BYTES}')
    return raw


def _check_kek_id(kek_id: object, what: str = "key id") -> str:
    if not isinstance(kek_id, str) or not _KEK_ID.fullmatch(kek_id):
        # Not echoed: a malformed id may be a key pasted into the wrong place.
        raise KeyringError(
            f"keyring: a {what} is not 1-64 characters of letters, digits, '.', '_', ':' or '-' (starting with a letter or digit)"
        )
    return kek_id


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict:
    seen: dict = {}
    for name, value in pairs:
        if name in seen:
            shown = f'"{name}"' if _KEK_ID.fullmatch(name) else "a name"
            raise KeyringError(f"keyring: {shown} appears twice")
        seen[name] = value
    return seen


class Keyring:
    """KEKs by id and which one wraps new data keys. Immutable once built."""

    __slots__ = ("_keys", "_primary", "_sealer")

    def __init__(self, keys: dict[str, bytes], primary: str):
        if not keys:
            raise KeyringError("keyring: no keys")
        checked = {}
        for kek_id, key in keys.items():
            _check_kek_id(kek_id)
            if not isinstance(key, (bytes, bytearray)):
                raise KeyringError(f'keyring: key "{kek_id}" must be bytes')
            if len(key) != KEY_BYTES:
                raise KeyringError(f'keyring: key "{kek_id}" is {len(key)} bytes, expected {KEY_BYTES}')
            checked[kek_id] = bytes(key)
        _check_kek_id(primary, "primary")
        if primary not in checked:
            raise KeyringError(f'keyring: primary "{primary}" is not among the keys')
        self._keys = checked
        self._primary = primary
        self._sealer = AESGCM(checked[primary])  # made once: every new data key is wrapped with it

    def __reduce__(self):
        return Keyring, (self._keys, self._primary)  # import workers get one; the cipher is made there

    @property
    def keys(self) -> dict[str, bytes]:
        return dict(self._keys)

    @property
    def primary(self) -> str:
        return self._primary

    @property
    def kek_ids(self) -> list[str]:
        return sorted(self._keys)

    def __contains__(self, kek_id: object) -> bool:
        return kek_id in self._keys

    def __repr__(self) -> str:
        return f"Keyring(primary={self._primary!r}, kek_ids={self.kek_ids!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Keyring) and (self._primary, self._keys) == (other._primary, other._keys)

    __hash__ = None  # type: ignore[assignment]

    # -- loading ----------------------------------------------------------------------------------

    @classmethod
    def from_json(cls, text: str) -> "Keyring":
        try:
            document = json.loads(text, object_pairs_hook=_reject_duplicates)
        except json.JSONDecodeError as exc:
            # exc.msg says what was expected, never what was there.
            raise KeyringError(f"keyring: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        except (TypeError, ValueError) as exc:
            if isinstance(exc, KeyringError):
                raise
            raise KeyringError("keyring: not valid JSON text") from None
        if not isinstance(document, dict):
            raise KeyringError('keyring: expected a JSON object {"primary": ..., "keys": {...}}')
        unknown = sorted(set(document) - {"primary", "keys"})
        if unknown:
            shown = ", ".join(f'"{u}"' if _KEK_ID.fullmatch(u) else "(unprintable)" for u in unknown)
            raise KeyringError(f'keyring: unknown field {shown} (expected only "primary" and "keys")')
        if "keys" not in document:
            raise KeyringError('keyring: "keys" is missing')
        if "primary" not in document:
            raise KeyringError('keyring: "primary" is missing')
        raw_keys = document["keys"]
        if not isinstance(raw_keys, dict) or not raw_keys:
            raise KeyringError('keyring: "keys" must be a non-empty object of id: base64 key')
        keys = {}
        for kek_id, encoded in raw_keys.items():
            _check_kek_id(kek_id)
            keys[kek_id] = _decode_key(kek_id, encoded)
        primary = document["primary"]
        if not isinstance(primary, str):
            raise KeyringError('keyring: "primary" must be a key id (a string)')
        if primary not in keys:
            if primary in raw_keys.values() or not _KEK_ID.fullmatch(primary):
                raise KeyringError('keyring: "primary" is not among the keys (it must be a key id, not a key)')
            raise KeyringError(f'keyring: primary "{primary}" is not among the keys')
        return cls(keys, primary)

    @classmethod
    def load(cls, keyring_json: str | None, keyring_file: str | None) -> "Keyring":
        """From the JSON itself or from a file holding it: exactly one of the two."""
        keyring_json = keyring_json or None
        keyring_file = keyring_file or None
        if (keyring_json is None) == (keyring_file is None):
            raise KeyringError(
                "keyring: give exactly one of the keyring JSON (LINKLEDGER_KEYRING) or a keyring file (LINKLEDGER_KEYRING_FILE)"
            )
        if keyring_file is not None:
            try:
                with open(keyring_file, encoding="utf-8") as f:
                    keyring_json = f.read()
            except OSError as exc:
                raise KeyringError(f"keyring: cannot read {keyring_file!r}: {exc.strerror or type(exc).__name__}") from None
            except UnicodeDecodeError:
                raise KeyringError(f"keyring: {keyring_file!r} is not UTF-8 text") from None
        return cls.from_json(keyring_json)

    @staticmethod
    def generate(kek_id: str | None = None) -> str:
        """A new keyring (JSON) with one fresh random KEK as primary; id defaults to kek-<YYYY-MM>."""
        kek_id = _check_kek_id(kek_id or f"kek-{datetime.now(timezone.utc):%Y-%m}")
        return Keyring({kek_id: AESGCM.generate_key(bit_length=256)}, kek_id).to_json()

    def with_new_key(self, kek_id: str, *, primary: bool = True) -> "Keyring":
        """This keyring plus a fresh random KEK (by default the new primary): the first step of rotation."""
        _check_kek_id(kek_id)
        if kek_id in self._keys:
            raise KeyringError(f'keyring: key "{kek_id}" already exists')
        keys = {**self._keys, kek_id: AESGCM.generate_key(bit_length=256)}
        return Keyring(keys, kek_id if primary else self._primary)

    def without(self, kek_id: str) -> "Keyring":
        """This keyring minus a retired KEK (never the primary)."""
        if kek_id == self._primary:
            raise KeyringError(f'keyring: "{kek_id}" is the primary and cannot be removed')
        if kek_id not in self._keys:
            raise KeyringError(f'keyring: key "{kek_id}" is not loaded')
        return Keyring({k: v for k, v in self._keys.items() if k != kek_id}, self._primary)

    def to_json(self) -> str:
        """The keyring as JSON, key material included: for writing a keyring file, never for logs."""
        return json.dumps(
            {"primary": self._primary, "keys": {k: base64.b64encode(v).decode() for k, v in sorted(self._keys.items())}},
            indent=2,
        )

    # -- wrapping ---------------------------------------------------------------------------------

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """(primary kek id, nonce || AES-256-GCM ciphertext of data_key), the kek id as associated data."""
        if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != KEY_BYTES:
            raise KeyringError(f"keyring: a data key must be {KEY_BYTES} bytes")
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._sealer.encrypt(nonce, bytes(data_key), self._primary.encode())
        return self._primary, nonce + sealed

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        key = self._keys.get(kek_id)
        if key is None:
            shown = f'"{kek_id}"' if isinstance(kek_id, str) and _KEK_ID.fullmatch(kek_id) else "(malformed id)"
            raise KeyringError(
                f"keyring: KEK {shown} is not loaded (loaded: {', '.join(self.kek_ids)}); add it to the keyring"
            )
        wrapped = bytes(wrapped) if wrapped is not None else b""
        if len(wrapped) != NONCE_BYTES + KEY_BYTES + _TAG_BYTES:
            raise UnwrapError(f'keyring: a data key wrapped under KEK "{kek_id}" has the wrong length ({len(wrapped)} bytes)')
        try:
            return AESGCM(key).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], kek_id.encode())
        except InvalidTag:
            raise UnwrapError(
                f'keyring: a data key does not unwrap under KEK "{kek_id}" (a different key under the same id, or altered bytes)'
            ) from None
