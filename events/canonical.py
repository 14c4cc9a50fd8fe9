"""Canonical JSON: the exact bytes that are stored and hashed.

Sorted keys, no insignificant whitespace, UTF-8, and only JSON's exact types: no floats
(times travel as ISO-8601 strings, durations as integers), so the same payload always
hashes to the same bytes.
"""

import json
from typing import Any

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


def _refuse_number(text: str) -> Any:
    raise ValueError(text)


# Built once: json.dumps/json.loads with options build a new encoder/decoder on every call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_EXACT_DECODER = json.JSONDecoder(parse_float=_refuse_number, parse_constant=_refuse_number)


class CanonicalJson(str):
    """JSON text already known to be canonical and within the size limit: what canonical_json
    returns, and what the catalog encodes events to. The store takes it as is instead of
    re-encoding and re-checking an event payload that was checked when it was built."""

    __slots__ = ()


def canonical_json(value: Any, *, what: str = "data", limit: int = MAX_PAYLOAD_BYTES) -> CanonicalJson:
    """Encode `value` canonically, refusing floats, non-JSON values and oversized payloads."""
    try:
        if not isinstance(value, dict):
            raise ValueError("not an object")
        text = _ENCODER.encode(value)
        encoded = text.encode()
        # Parsing back in C is the cheap way to find what JSON cannot hold exactly: floats refuse to
        # parse, and keys json.dumps coerced to strings or tuples turned lists make the copy differ.
        if _EXACT_DECODER.decode(text) != value:
            raise ValueError("changed by encoding")
    except (TypeError, ValueError):  # UnicodeEncodeError (lone surrogates) is a ValueError
        _check(value, what)
        raise InvalidEventError(f"{what}: not a JSON object of exact values (lone surrogate or non-JSON type)") from None
    size = len(encoded)
    if size > limit:
        raise InvalidEventError(f"{what}: payload is {size} bytes, the limit is {limit}")
    return CanonicalJson(text)


def typed_json(value: dict[str, Any], *, what: str = "data", limit: int = MAX_PAYLOAD_BYTES) -> CanonicalJson:
    """Canonical text of a payload whose every value was typed and checked when it was built (a
    catalog event's model_dump: free-form objects are checked by their validator, so no float
    can be in it): encoded once, without the parse-back check."""
    try:
        text = _ENCODER.encode(value)
        size = len(text.encode())
    except (TypeError, ValueError):
        return canonical_json(value, what=what, limit=limit)  # names what is wrong
    if size > limit:
        raise InvalidEventError(f"{what}: payload is {size} bytes, the limit is {limit}")
    return CanonicalJson(text)
