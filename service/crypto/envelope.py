"""Envelope encryption of an event's secret part under its owner's data key.

blob = 0x01 (format version) || 12-byte random nonce || AES-256-GCM(canonical JSON of the secrets).
The associated data (`event_aad`) binds the ciphertext to its stream and event, so a blob copied
into another event or another account does not decrypt.

Errors never carry plaintext, keys or ciphertext.
"""

import json
import os
import uuid
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from events.canonical import canonical_bytes, holds_exactly
from events.envelope import uuid_text

VERSION = 0x01
KEY_BYTES = 32
NONCE_BYTES = 12
_TAG_BYTES = 16
_OVERHEAD = 1 + NONCE_BYTES + _TAG_BYTES
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class EnvelopeError(ValueError):
    """Encryption or decryption refused; the message is one line without secrets."""


class DecryptionError(EnvelopeError):
    """The blob does not open: wrong key, wrong stream/event, altered bytes or an unknown format."""


def event_aad(stream_id: str, event_id: uuid.UUID | str) -> bytes:
    """Associated data binding a ciphertext to one event of one stream."""
    if not isinstance(event_id, uuid.UUID):
        event_id = uuid.UUID(str(event_id))  # one spelling of each id
    return f"{stream_id}\x1f{uuid_text(event_id)}".encode()


def _check_key(data_key: bytes, error: type[EnvelopeError]) -> bytes:
    if not isinstance(data_key, (bytes, bytearray)) or len(data_key) != KEY_BYTES:
        raise error(f"envelope: a data key must be {KEY_BYTES} bytes")
    return bytes(data_key)


def _canonical(plaintext: dict[str, Any]) -> bytes:
    if not isinstance(plaintext, dict):
        raise EnvelopeError("envelope: the plaintext must be a JSON object")
    try:
        if holds_exactly(plaintext):  # string keys, no floats (orjson would write NaN as null): orjson's bytes
            return canonical_bytes(plaintext)
        if not all(isinstance(k, str) for k in plaintext):
            raise TypeError
        return _ENCODER.encode(plaintext).encode()
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        raise EnvelopeError("envelope: the plaintext is not a JSON object of JSON values (string keys, no NaN, valid Unicode)") from None


def encrypt(data_key: bytes, plaintext: dict[str, Any], aad: bytes) -> bytes:
    key = _check_key(data_key, EnvelopeError)
    nonce = os.urandom(NONCE_BYTES)
    return bytes([VERSION]) + nonce + AESGCM(key).encrypt(nonce, _canonical(plaintext), bytes(aad))


def decrypt(data_key: bytes, blob: bytes, aad: bytes) -> dict[str, Any]:
    return decrypt_with(AESGCM(_check_key(data_key, DecryptionError)), blob, aad)


def decrypt_with(cipher: AESGCM, blob: bytes, aad: bytes) -> dict[str, Any]:
    """decrypt() with the data key's cipher made already (a cached key keeps its own: see DataKey.cipher)."""
    if blob is None or len(blob) < _OVERHEAD:
        raise DecryptionError("envelope: ciphertext is too short")
    blob = bytes(blob)
    if blob[0] != VERSION:
        raise DecryptionError(f"envelope: unknown ciphertext format {blob[0]}")
    try:
        text = cipher.decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], bytes(aad))
    except InvalidTag:
        raise DecryptionError(
            "envelope: ciphertext does not authenticate (wrong data key, another stream or event, or altered bytes)"
        ) from None
    try:
        value = json.loads(text.decode())  # always UTF-8 (see _canonical): no encoding detection
    except ValueError:
        raise DecryptionError("envelope: decrypted plaintext is not JSON") from None
    if not isinstance(value, dict):
        raise DecryptionError("envelope: decrypted plaintext is not a JSON object")
    return value
