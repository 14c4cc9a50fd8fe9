"""Canonical JSON: the exact bytes that are stored and hashed.

Sorted keys, no insignificant whitespace, UTF-8, and only JSON's exact types: no floats
(times travel as ISO-8601 strings, durations as integers), so the same payload always
hashes to the same bytes.
"""

import json
from typing import Any

import orjson

from events.errors import InvalidEventError

MAX_PAYLOAD_BYTES = 1024 * 1024


def _check(value: Any, path: str) -> None:
    """Name the first place JSON cannot hold exactly."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            raise InvalidEventError(f"{path}: string is not valid Unicode (lone surrogate)") from None
        return
    if value is None or isinstance(value, (bool, int)):
        return
    if isinstance(value, float):
        raise InvalidEventError(f"{path}: floats are not allowed in event payloads (got {value!r})")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidEventError(f"{path}: object keys must be strings (got {key!r})")
            _check(key, f"{path} key")
            _check(item, f"{path}.{key}")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    raise InvalidEventError(f"{path}: {type(value).__name__} is not a JSON value" + (" (use a list)" if isinstance(value, tuple) else ""))


# Built once: json.dumps/json.loads with options build a new encoder/decoder on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_SCALARS = (str, int, type(None))  # bool is an int


def holds_exactly(value: Any) -> bool:
    """Only what JSON holds exactly: objects with string keys, arrays (lists, not tuples: a tuple
    would come back a list), strings, integers, booleans and null; no floats."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, _SCALARS) and not isinstance(item, float):
            continue
        if isinstance(item, dict):
            for key, inner in item.items():
                if not isinstance(key, str):
                    return False
                pending.append(inner)
        elif isinstance(item, list):
            pending.extend(item)
        else:
            return False
    return True


def canonical_bytes(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8, non-ASCII unescaped: orjson, whose output is the
    standard library's byte for byte and many times faster (a property test holds the two
    together); the standard library for what orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value).encode()  # raises for what neither can encode


class CanonicalJson(str):
    """JSON text already known to be canonical and within the size limit: what canonical_json
    returns, and what the catalog encodes events to. The store takes it as is instead of
    re-encoding and re-checking an event payload that was checked when it was built."""

    __slots__ = ()


def canonical_json(value: Any, *, what: str = "data", limit: int = MAX_PAYLOAD_BYTES) -> CanonicalJson:
    """Encode `value` canonically, refusing floats, non-JSON values and oversized payloads."""
    try:
        if not isinstance(value, dict) or not holds_exactly(value):
            raise ValueError("not a JSON object of exact values")
        encoded = canonical_bytes(value)
    except (TypeError, ValueError):  # UnicodeEncodeError (lone surrogates) is a ValueError
        _check(value, what)
        raise InvalidEventError(f"{what}: not a JSON object of exact values (lone surrogate or non-JSON type)") from None
    return within_limit(encoded, what, limit)


def typed_json(value: dict[str, Any], *, what: str = "data", limit: int = MAX_PAYLOAD_BYTES) -> CanonicalJson:
    """Canonical text of a payload whose every value was typed and checked when it was built (a
    catalog event's model_dump: free-form objects are checked by their validator, so no float
    can be in it): encoded without walking it again."""
    try:
        encoded = canonical_bytes(value)
    except (TypeError, ValueError):
        return canonical_json(value, what=what, limit=limit)  # names what is wrong
    return within_limit(encoded, what, limit)


def within_limit(encoded: bytes, what: str, limit: int = MAX_PAYLOAD_BYTES) -> CanonicalJson:
    """Encoded canonical JSON as CanonicalJson, or InvalidEventError when it is over `limit` bytes."""
    if len(encoded) > limit:
        raise InvalidEventError(f"{what}: payload is {len(encoded)} bytes, the limit is {limit}")
    return CanonicalJson(encoded.decode())
