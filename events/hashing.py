"""The per-stream hash chain.

hash = SHA-256(prev_hash || body_hash), body_hash = SHA-256(len||header || len||data || len||secret).
The body hash is computed by the writer (it holds every byte of the event); the database chains it
onto the stream's previous hash inside the append, so an append stays one round trip. Hashing the
ciphertext, not the plaintext, keeps chains verifiable after an account's key is shredded.
"""

import hashlib
import struct
import uuid
from datetime import datetime, timezone
from json.encoder import encode_basestring as _text  # JSON string literal, C speed

from events.envelope import uuid_text

GENESIS_HASH = bytes(32)


# The same few instants are formatted over and over (a command's `now` lands in every event's
# header and payload and in the snapshot), and isoformat costs microseconds each time.
_FORMATTED: dict[datetime, str] = {}


def format_instant(instant: datetime) -> str:
    """Microsecond ISO-8601 UTC, the precision PostgreSQL's timestamptz keeps."""
    text = _FORMATTED.get(instant)  # aware instants are equal (and hash alike) across time zones
    if text is not None:
        return text
    if instant.tzinfo is None:
        raise ValueError("instants must be timezone-aware")
    utc = instant if instant.tzinfo is timezone.utc else instant.astimezone(timezone.utc)
    text = utc.isoformat(timespec="microseconds")[:-6] + "Z"  # "+00:00" becomes "Z"
    if len(_FORMATTED) >= 4096:
        _FORMATTED.clear()
    _FORMATTED[instant] = text
    return text


# A command's correlation id is in the header of each of its events: its text made once.
_ID_TEXTS: dict[uuid.UUID, str] = {}


def _id_text(value: uuid.UUID) -> str:
    text = _ID_TEXTS.get(value)
    if text is None:
        if len(_ID_TEXTS) >= 4096:
            _ID_TEXTS.clear()
        text = _ID_TEXTS[value] = _text(str(value))
    return text


def header_bytes(
    *,
    event_id: uuid.UUID,
    stream_id: str,
    version: int,
    type: str,
    schema_version: int,
    occurred_at: datetime,
    actor: str,
    correlation_id: uuid.UUID | None,
    causation_id: uuid.UUID | None,
    key_id: str | None,
) -> bytes:
    # Every field is a str, int or None with fixed names, so a sorted template is canonical JSON.
    return (
        f'{{"actor":{_text(actor)},'
        f'"causation_id":{_id_text(causation_id) if causation_id else "null"},'
        f'"correlation_id":{_id_text(correlation_id) if correlation_id else "null"},'
        f'"event_id":"{uuid_text(event_id)}",'  # a UUID's text needs no escaping
        f'"key_id":{_text(key_id) if key_id is not None else "null"},'
        f'"occurred_at":{_text(format_instant(occurred_at))},'
        f'"schema_version":{int(schema_version)},"stream_id":{_text(stream_id)},'
        f'"type":{_text(type)},"version":{int(version)}}}'
    ).encode()


def _framed(part: bytes) -> bytes:
    return struct.pack(">Q", len(part)) + part


def body_hash(header: bytes, data: str, secret: bytes | None) -> bytes:
    digest = hashlib.sha256()
    digest.update(_framed(header))
    digest.update(_framed(data.encode()))
    # A flag byte keeps "no secret" and "an empty secret" apart.
    digest.update(b"\x00" if secret is None else b"\x01" + _framed(secret))
    return digest.digest()


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    return hashlib.sha256(prev_hash + body).digest()
