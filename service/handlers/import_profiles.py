"""Bulk import: request bodies and vendor export profiles turned into `ImportAccount` commands.

Pure: no I/O, the clock is injected. Every input record gives exactly one result (a command or a
`RecordError`), so one bad line never stops its neighbours, and no error ever carries a secret value.

Bodies (`parse_body`)
---------------------
* NDJSON (`application/x-ndjson`, `application/jsonl`, or any body not starting with `[`): one JSON
  value per physical line, numbered from 1; blank lines are skipped but counted, CRLF is accepted.
  As a courtesy, an `application/json` body that is one JSON value spread over several lines (a
  pretty-printed object) is one record at line 1.
* JSON array (a body starting with `[`, unless the content type says NDJSON): record N is item N,
  numbered from 1. A malformed array is a single error at line 1.

Profiles (`to_command`)
-----------------------
* ``truto``: the Truto-shaped body of EXAMPLES.md (`integration_name`, `tenant_id`,
  `authentication_method`, `external_ref`, `context.oauth.token{...}`, other context in clear;
  `context.api_key`, `context.password` and, for basic, `context.username` are credentials).
* ``nango``: a Nango connection export (`connection_id` -> external_ref, `provider_config_key` ->
  integration, `end_user.id` -> tenant_id falling back to `connection_id`, `credentials.type`
  OAUTH2 / API_KEY / BASIC, `connection_config` -> context, `metadata` -> context["metadata"]).
* ``canonical``: linkledger's own format, written by `export_record`, one JSON object per account::

    {
      "integration": "salesforce",             required, ^[a-z0-9][a-z0-9_-]{0,62}$
      "tenant_id": "customer_123",             required, 1..200 characters
      "authentication_method": "oauth2",       oauth2 (default) | api_key | basic
      "external_ref": "merge-linked-account-8f2c",   or null / absent
      "credentials": {                         secret; only these keys
        "access_token": "...",                 oauth2: required
        "refresh_token": "...",                oauth2: required
        "api_key": "...",                      api_key: required
        "username": "...",                     basic: required (not secret, but travels here)
        "password": "...",                     basic: required (may be "")
        "extra": {"token_secret": "..."}       further secrets; string values
      },
      "token_type": "Bearer",                  or null
      "expires_at": "2026-10-15T14:30:00Z",    ISO-8601 (UTC, written with Z) or null;
                                               "expires_in": <seconds> is accepted instead
      "scopes": ["api", "refresh_token"],      a list (a space/comma separated string is accepted)
      "context": {"instance_url": "https://acme.my.salesforce.com"}   non-secret, served in clear
    }

  Unknown keys, at the top level or in `credentials`, are refused (a typo must not drop data).

Rules common to all profiles
----------------------------
* `expires_at`: ISO-8601 with `Z` or an offset (normalised to aware UTC; naive means UTC), or epoch
  seconds (a number or a digit string). `expires_in` (seconds, number or digit string) means
  `now + seconds` and is used only when there is no `expires_at`.
* Scopes: a space- or comma-separated string, or a list of strings.
* Secrets never stay in the clear context: any context key named like a secret (`password`,
  `client_secret`, `*_token`, `api_key`, ...), at any depth, moves to `credentials.extra` under its
  path within the context. Context numbers must be exact (no fractions: the log refuses floats).
* `RecordError.field` is the dotted path as the user sent it (`context.oauth.token.refresh_token`,
  `credentials.expires_at`, `scopes[2]`); `reason` may quote non-secret values (a bad expires_at, an
  unknown method) but never a token, key or password.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, get_args

from pydantic import ValidationError

from service.domain.commands import ImportAccount
from service.domain.identity import account_identity

UTC = timezone.utc
Profile = Literal["canonical", "truto", "nango"]
PROFILES: tuple[str, ...] = get_args(Profile)
METHODS = ("oauth2", "api_key", "basic")
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/ndjson", "application/x-jsonlines"})
MAX_CONTEXT_DEPTH = 32
_MAX_EPOCH = 253402300799  # 9999-12-31T23:59:59Z
_MISSING: Any = object()
_SECRET_FIELDS = ("access_token", "refresh_token", "api_key", "username", "password")


class RecordError(Exception):
    """Why one record was refused: `field` is a dotted path into the record as sent ("" for the
    whole record), `reason` a short explanation that never contains a secret value."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(field, reason)
        self.field = field
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def __repr__(self) -> str:
        return f"RecordError(field={self.field!r}, reason={self.reason!r})"


@dataclass(frozen=True, slots=True)
class ParsedRecord:
    line: int
    command: ImportAccount | None
    error: RecordError | None

    @property
    def ok(self) -> bool:
        return self.command is not None


# --------------------------------------------------------------------------- bodies


class _NotJSON(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON value")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def _loads(text: str) -> object:
    return _DECODER.decode(text)


def _json_problem(exc: BaseException, *, one_line: bool) -> str:
    """Describe a parse failure without quoting the document (it may hold tokens)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (column {exc.colno})" if one_line else f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    if isinstance(exc, _NotJSON):
        return str(exc)
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start + 1})"
    return "a number has too many digits"  # int() digit limit, the only other ValueError


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


_LEADING_SPACE = re.compile(rb"[ \t\r\n]*")


def parse_body(body: bytes, content_type: str | None) -> Iterator[tuple[int, object]]:
    """Yield (line number, parsed JSON value or RecordError) for every record in the body."""
    body = bytes(body)
    start = 3 if body.startswith(b"\xef\xbb\xbf") else 0
    media = _media_type(content_type)
    first = _LEADING_SPACE.match(body, start).end()  # type: ignore[union-attr]  # always matches
    if media not in NDJSON_TYPES and body.startswith(b"[", first):
        yield from _parse_array(body[start:])
        return
    if (media == "application/json" or media.endswith("+json")) and body.find(b"\n", first) >= 0:
        try:  # one pretty-printed value; NDJSON fails at once with "Extra data" after its first line
            value = _loads(body[start:].decode("utf-8"))
        except (ValueError, RecursionError):
            pass
        else:
            yield body.count(b"\n", 0, first) + 1, value
            return
    yield from _parse_lines(body, start)


def _parse_array(data: bytes) -> Iterator[tuple[int, object]]:
    problem = None
    try:
        items = _loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        problem = _json_problem(exc, one_line=False)
    if problem is not None:
        yield 1, RecordError("", f"the JSON array could not be parsed: {problem}")
        return
    if not isinstance(items, list):  # cannot happen for text starting with "[", kept for safety
        yield 1, RecordError("", "the JSON array could not be parsed: not an array")
        return
    for index, item in enumerate(items, start=1):
        yield index, item


def _parse_lines(body: bytes, start: int) -> Iterator[tuple[int, object]]:
    number = 0
    position = start
    end = len(body)
    while position <= end:
        newline = body.find(b"\n", position)
        if newline < 0:
            newline = end
        line = body[position:newline]
        position = newline + 1
        number += 1
        if not line.strip():
            continue
        problem = None
        try:
            value = _loads(line.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            problem = _json_problem(exc, one_line=True)
        if problem is not None:
            yield number, RecordError("", f"not valid JSON: {problem}")
        else:
            yield number, value


# --------------------------------------------------------------------------- values


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _quote(value: object, limit: int = 80) -> str:
    """A short rendering of a NON-secret value for an error reason."""
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _valid_unicode(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a "\ud800" escape
        return False
    return True


def _absent(value: object) -> bool:
    return value is None or value is _MISSING


def _object(value: object, path: str) -> dict:
    if _absent(value):
        return {}
    if not isinstance(value, dict):
        raise RecordError(path, f"must be a JSON object, not {_kind(value)}")
    return value


def _text(value: object, path: str, *, required: bool = False, numbers: bool = False) -> str | None:
    """A non-secret string; identifiers (`numbers=True`) may come as integers."""
    if _absent(value):
        if required:
            raise RecordError(path, "required")
        return None
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RecordError(path, f"must be a string, not {_kind(value)}")
    if not _valid_unicode(value):
        raise RecordError(path, "is not valid Unicode (lone surrogate)")
    if required and not value:
        raise RecordError(path, "must not be empty")
    return value


def _secret(value: object, path: str) -> str | None:
    """A secret string; the reason never shows it."""
    if _absent(value):
        return None
    if not isinstance(value, str):
        raise RecordError(path, f"must be a string, not {_kind(value)}")
    if not _valid_unicode(value):
        raise RecordError(path, "is not valid Unicode (lone surrogate)")
    return value


def _secret_text(value: object, path: str) -> str:
    """Any JSON value found under a secret name, as text to keep encrypted."""
    if isinstance(value, str):
        return _secret(value, path) or ""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _method(value: object, path: str) -> str:
    if _absent(value):
        return "oauth2"
    if not isinstance(value, str):
        raise RecordError(path, f"must be a string, not {_kind(value)}")
    method = value.strip().lower()
    if method not in METHODS:
        raise RecordError(path, f"unknown authentication method {_quote(value)}; expected oauth2, api_key or basic")
    return method


def _aware_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _epoch(value: int | float, path: str, shown: object) -> datetime:
    if isinstance(value, float) and not math.isfinite(value):
        raise RecordError(path, f"not an ISO-8601 timestamp or epoch seconds: {_quote(shown)}")
    if not 0 <= value <= _MAX_EPOCH:
        hint = " (milliseconds? expected seconds)" if value > _MAX_EPOCH else ""
        raise RecordError(path, f"epoch seconds out of range: {_quote(shown)}{hint}")
    return datetime.fromtimestamp(value, UTC)


_DIGITS = re.compile(r"\s*[0-9]{1,20}\s*")


def _expires_at(value: object, path: str) -> datetime:
    if isinstance(value, bool):
        raise RecordError(path, f"not an ISO-8601 timestamp or epoch seconds: {_quote(value)}")
    if isinstance(value, (int, float)):
        return _epoch(value, path, value)
    if not isinstance(value, str):
        raise RecordError(path, f"must be an ISO-8601 string or epoch seconds, not {_kind(value)}")
    if _DIGITS.fullmatch(value):
        return _epoch(int(value), path, value)
    try:
        return _aware_utc(datetime.fromisoformat(value.strip()))
    except (ValueError, OverflowError):
        raise RecordError(path, f"not an ISO-8601 timestamp or epoch seconds: {_quote(value)}") from None


def _expires_in(value: object, path: str, now: datetime) -> datetime:
    seconds: int | float
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str) and _DIGITS.fullmatch(value):
        seconds = int(value)
    else:
        raise RecordError(path, f"must be a number of seconds, got {_quote(value)}")
    if isinstance(seconds, float) and not math.isfinite(seconds):
        raise RecordError(path, f"must be a number of seconds, got {_quote(value)}")
    if seconds < 0:
        raise RecordError(path, f"must not be negative, got {_quote(value)}")
    try:
        return now + timedelta(seconds=seconds)
    except (OverflowError, ValueError):
        raise RecordError(path, f"too large, got {_quote(value)}") from None


def _expiry(expires_at: object, at_path: str, expires_in: object, in_path: str, now: datetime) -> datetime | None:
    if not _absent(expires_at):
        return _expires_at(expires_at, at_path)
    if not _absent(expires_in):
        return _expires_in(expires_in, in_path, now)
    return None


_SCOPE_SPLIT = re.compile(r"[\s,]+")


def _scopes(value: object, path: str) -> tuple[str, ...]:
    if _absent(value):
        return ()
    if isinstance(value, str):
        if not _valid_unicode(value):
            raise RecordError(path, "is not valid Unicode (lone surrogate)")
        return tuple(scope for scope in _SCOPE_SPLIT.split(value) if scope)
    if isinstance(value, list):
        for index, scope in enumerate(value):
            if not isinstance(scope, str):
                raise RecordError(f"{path}[{index}]", f"must be a string, not {_kind(scope)}")
            if not _valid_unicode(scope):
                raise RecordError(f"{path}[{index}]", "is not valid Unicode (lone surrogate)")
        return tuple(value)
    raise RecordError(path, f"must be a string or a list of strings, not {_kind(value)}")


# --------------------------------------------------------------------------- context and secrets

_SECRET_NAMES = frozenset({
    "credential", "credentials", "secret", "password", "passwd", "apikey", "token",
    "authorization", "proxyauthorization", "cookie", "setcookie", "bearer",  # HTTP auth material
})
_SECRET_SUFFIXES = (
    "secret", "password", "passwd", "passphrase", "apikey", "token", "privatekey", "secretkey",
    "signingkey", "accesskey", "credentials",
)


@functools.lru_cache(maxsize=4096)
def is_secret_name(key: str) -> bool:
    """True for context keys that hold secrets (kept encrypted, never in clear context)."""
    normalized = re.sub(r"[^a-z0-9]", "", key.lower())
    return normalized in _SECRET_NAMES or normalized.endswith(_SECRET_SUFFIXES)


def _add_extra(extra: dict[str, str], name: str, value: str, path: str) -> None:
    if name in extra:
        raise RecordError(path, f"collides with another secret kept as {_quote(name)}")
    extra[name] = value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _clean(value: object, sent: str, inner: str, extra: dict[str, str], depth: int) -> Any:
    """Non-secret context, checked for what the log can hold; secret-named keys move to `extra`."""
    if isinstance(value, dict):
        if depth > MAX_CONTEXT_DEPTH:
            raise RecordError(sent, f"nested more than {MAX_CONTEXT_DEPTH} levels deep")
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not _valid_unicode(key):
                raise RecordError(sent, "has a key that is not valid Unicode (lone surrogate)")
            sent_path, inner_path = _join(sent, key), _join(inner, key)
            if is_secret_name(key):
                if item is not None:
                    _add_extra(extra, inner_path, _secret_text(item, sent_path), sent_path)
                continue
            out[key] = _clean(item, sent_path, inner_path, extra, depth + 1)
        return out
    if isinstance(value, list):
        if depth > MAX_CONTEXT_DEPTH:
            raise RecordError(sent, f"nested more than {MAX_CONTEXT_DEPTH} levels deep")
        return [_clean(item, f"{sent}[{i}]", f"{inner}[{i}]", extra, depth + 1) for i, item in enumerate(value)]
    if isinstance(value, float):
        raise RecordError(sent, "numbers with a fraction or exponent cannot be kept exactly; send it as a string")
    if isinstance(value, str) and not _valid_unicode(value):
        raise RecordError(sent, "is not valid Unicode (lone surrogate)")
    return value


def _context(value: object, sent: str, extra: dict[str, str], inner: str = "") -> dict[str, Any]:
    return _clean(_object(value, sent), sent, inner, extra, 1)


# --------------------------------------------------------------------------- building the command


@dataclass
class _Fields:
    """What a profile read, plus where each field was in the record (for error paths)."""

    integration: str | None
    tenant_id: str | None
    method: str
    external_ref: str | None
    secrets: dict[str, Any]
    token_type: str | None
    expires_at: datetime | None
    scopes: tuple[str, ...]
    context: dict[str, Any]
    paths: dict[str, str]


@functools.lru_cache(maxsize=256)
def _path_map(**where: str) -> dict[str, str]:
    """Where each ImportAccount field was in the record (shared: never mutate the result)."""
    paths = {"environment": "environment", **where}
    for name in (*_SECRET_FIELDS, "extra"):
        if name in where:
            paths[f"credentials.{name}"] = where[name]
    return paths


def _require_credentials(fields: _Fields) -> None:
    secrets, paths, method = fields.secrets, fields.paths, fields.method
    if method == "oauth2":
        if not secrets.get("access_token"):
            raise RecordError(paths["access_token"], "required for oauth2: without it there is no token to serve")
        if not secrets.get("refresh_token"):
            raise RecordError(paths["refresh_token"], "required for oauth2: without it the token cannot be kept alive")
    elif method == "api_key":
        if not secrets.get("api_key"):
            raise RecordError(paths["api_key"], "required for api_key accounts")
    else:
        if not secrets.get("username"):
            raise RecordError(paths["username"], "required for basic accounts")
        if secrets.get("password") is None:
            raise RecordError(paths["password"], "required for basic accounts (may be empty)")


def _build(fields: _Fields, *, environment: str, profile: str) -> ImportAccount:
    _require_credentials(fields)
    credentials = {name: value for name, value in fields.secrets.items() if value is not None}
    values = {
        "environment": environment,
        "integration": fields.integration,
        "tenant_id": fields.tenant_id,
        "authentication_method": fields.method,
        "external_ref": fields.external_ref,
        "credentials": credentials,
        "token_type": fields.token_type,
        "expires_at": fields.expires_at,
        "scopes": fields.scopes,
        "context": fields.context,
        "source": f"import:{profile}",
    }
    error: RecordError | None = None
    try:
        return ImportAccount(**values)
    except ValidationError as exc:
        error = _validation_error(exc, fields.paths, values)
    raise error  # outside the except block: no ValidationError (with its inputs) chained on


def _validation_error(exc: ValidationError, paths: dict[str, str], values: dict[str, Any]) -> RecordError:
    details = exc.errors(include_url=False, include_input=False, include_context=False)
    if not details:
        return RecordError("", "invalid record")
    loc = tuple(str(part) for part in details[0]["loc"])
    reason = str(details[0]["msg"])
    field = ".".join(loc)
    for size in range(len(loc), 0, -1):
        key = ".".join(loc[:size])
        if key in paths:
            field = paths[key] + "".join(f".{part}" for part in loc[size:])
            break
    if loc and loc[0] in ("environment", "integration", "tenant_id", "external_ref", "token_type") and len(loc) == 1:
        reason = f"{reason} (got {_quote(values.get(loc[0]))})"
    return RecordError(field, reason)


_TRUTO_TOKEN_FIELDS = frozenset(("access_token", "refresh_token", "expires_at", "expires_in", "token_type", "scope"))
# Where each field is in a Truto record, by the name its API key goes by (built once, not per record).
_TRUTO_PATHS = {
    key_name: _path_map(
        integration="integration_name", tenant_id="tenant_id", external_ref="external_ref",
        authentication_method="authentication_method", access_token="context.oauth.token.access_token",
        refresh_token="context.oauth.token.refresh_token", api_key=f"context.{key_name}", username="context.username",
        password="context.password", extra="context", token_type="context.oauth.token.token_type",
        expires_at="context.oauth.token.expires_at", scopes="context.oauth.token.scope", context="context",
    )
    for key_name in ("api_key", "apiKey")
}


def _truto(record: dict, now: datetime) -> _Fields:
    token_path = "context.oauth.token"
    context_in = _object(record.get("context"), "context")
    oauth = _object(context_in.get("oauth"), "context.oauth")
    token = _object(oauth.get("token"), token_path)
    method = _method(record.get("authentication_method"), "authentication_method")
    extra: dict[str, str] = {}
    secrets: dict[str, Any] = {
        "access_token": _secret(token.get("access_token"), f"{token_path}.access_token"),
        "refresh_token": _secret(token.get("refresh_token"), f"{token_path}.refresh_token"),
    }
    for key, value in token.items():
        if key not in _TRUTO_TOKEN_FIELDS and value is not None:
            _add_extra(extra, key, _secret_text(value, f"{token_path}.{key}"), f"{token_path}.{key}")
    for key, value in oauth.items():
        if key != "token" and value is not None:
            _add_extra(extra, f"oauth.{key}", _secret_text(value, f"context.oauth.{key}"), f"context.oauth.{key}")
    rest = {key: value for key, value in context_in.items() if key != "oauth"}
    key_name = "api_key" if "api_key" in rest or "apiKey" not in rest else "apiKey"
    secrets["api_key"] = _secret(rest.pop(key_name, None), f"context.{key_name}")
    secrets["password"] = _secret(rest.pop("password", None), "context.password")
    if method == "basic":
        secrets["username"] = _text(rest.pop("username", None), "context.username")
    context = _context(rest, "context", extra)
    secrets["extra"] = extra
    return _Fields(
        integration=_text(record.get("integration_name"), "integration_name", required=True),
        tenant_id=_text(record.get("tenant_id"), "tenant_id", required=True, numbers=True),
        method=method,
        external_ref=_text(record.get("external_ref"), "external_ref", numbers=True),
        secrets=secrets,
        token_type=_text(token.get("token_type"), f"{token_path}.token_type"),
        expires_at=_expiry(
            token.get("expires_at"), f"{token_path}.expires_at", token.get("expires_in"), f"{token_path}.expires_in", now
        ),
        scopes=_scopes(token.get("scope"), f"{token_path}.scope"),
        context=context,
        paths=_TRUTO_PATHS[key_name],
    )


_NANGO_TYPES = {"OAUTH2": "oauth2", "API_KEY": "api_key", "BASIC": "basic"}


def _nango(record: dict, now: datetime) -> _Fields:
    creds = record.get("credentials")
    if _absent(creds):
        raise RecordError("credentials", "required")
    creds = _object(creds, "credentials")
    kind = creds.get("type")
    if _absent(kind):
        raise RecordError("credentials.type", "required (OAUTH2, API_KEY or BASIC)")
    if not isinstance(kind, str):
        raise RecordError("credentials.type", f"must be a string, not {_kind(kind)}")
    method = _NANGO_TYPES.get(kind.strip().upper())
    if method is None:
        raise RecordError("credentials.type", f"unsupported credentials type {_quote(kind)}; expected OAUTH2, API_KEY or BASIC")
    raw = _object(creds.get("raw"), "credentials.raw")
    extra: dict[str, str] = {}

    def pick(name: str) -> tuple[object, str]:
        if _absent(creds.get(name)) and not _absent(raw.get(name)):
            return raw.get(name), f"credentials.raw.{name}"
        return creds.get(name), f"credentials.{name}"

    access, access_path = pick("access_token")
    refresh, refresh_path = pick("refresh_token")
    key_name = "apiKey" if "apiKey" in creds else "api_key"
    secrets: dict[str, Any] = {
        "access_token": _secret(access, access_path),
        "refresh_token": _secret(refresh, refresh_path),
        "api_key": _secret(creds.get(key_name), f"credentials.{key_name}"),
        "username": _text(creds.get("username"), "credentials.username"),
        "password": _secret(creds.get("password"), "credentials.password"),
    }
    known = {"type", "raw", "access_token", "refresh_token", "expires_at", key_name, "username", "password"}
    for key, value in creds.items():
        if key not in known and value is not None:
            _add_extra(extra, key, _secret_text(value, f"credentials.{key}"), f"credentials.{key}")
    for key, value in raw.items():
        if key not in {"token_type", "expires_in", "scope", "access_token", "refresh_token"} and value is not None:
            _add_extra(extra, f"raw.{key}", _secret_text(value, f"credentials.raw.{key}"), f"credentials.raw.{key}")
    context = _context(record.get("connection_config"), "connection_config", extra)
    metadata = _object(record.get("metadata"), "metadata")
    if metadata:
        if "metadata" in context:
            raise RecordError("metadata", "collides with connection_config.metadata")
        context["metadata"] = _context(metadata, "metadata", extra, inner="metadata")
    secrets["extra"] = extra

    end_user = _object(record.get("end_user"), "end_user")
    connection_id = _text(record.get("connection_id"), "connection_id", numbers=True)
    if not _absent(end_user.get("id")):
        tenant_path = "end_user.id"
        tenant_id = _text(end_user.get("id"), tenant_path, required=True, numbers=True)
    else:
        tenant_path = "connection_id"
        if connection_id is None:
            raise RecordError("end_user.id", "required (or connection_id)")
        tenant_id = connection_id
    return _Fields(
        integration=_text(record.get("provider_config_key"), "provider_config_key", required=True),
        tenant_id=tenant_id,
        method=method,
        external_ref=connection_id,
        secrets=secrets,
        token_type=_text(raw.get("token_type"), "credentials.raw.token_type"),
        expires_at=_expiry(
            creds.get("expires_at"), "credentials.expires_at", raw.get("expires_in"), "credentials.raw.expires_in", now
        ),
        scopes=_scopes(raw.get("scope"), "credentials.raw.scope"),
        context=context,
        paths=_path_map(
            integration="provider_config_key", tenant_id=tenant_path, external_ref="connection_id",
            authentication_method="credentials.type", access_token=access_path, refresh_token=refresh_path,
            api_key=f"credentials.{key_name}", username="credentials.username", password="credentials.password",
            extra="credentials", token_type="credentials.raw.token_type", expires_at="credentials.expires_at",
            scopes="credentials.raw.scope", context="connection_config",
        ),
    )


_CANONICAL_KEYS = frozenset({
    "integration", "tenant_id", "authentication_method", "external_ref", "credentials", "token_type",
    "expires_at", "expires_in", "scopes", "context",
})
_CANONICAL_CREDENTIALS = frozenset({*_SECRET_FIELDS, "extra"})
_CANONICAL_PATHS = _path_map(**{name: name for name in _CANONICAL_KEYS}, **{
    name: f"credentials.{name}" for name in _CANONICAL_CREDENTIALS
})


def _canonical(record: dict, now: datetime) -> _Fields:
    for key in record:
        if key not in _CANONICAL_KEYS:
            raise RecordError(key, "unknown field in the canonical format")
    creds = _object(record.get("credentials"), "credentials")
    for key in creds:
        if key not in _CANONICAL_CREDENTIALS:
            raise RecordError(f"credentials.{key}", "unknown credential field; put provider-specific secrets under credentials.extra")
    extra: dict[str, str] = {}
    for key, value in _object(creds.get("extra"), "credentials.extra").items():
        if not _valid_unicode(key):
            raise RecordError("credentials.extra", "has a key that is not valid Unicode (lone surrogate)")
        secret = _secret(value, f"credentials.extra.{key}")
        if secret is not None:
            extra[key] = secret
    secrets: dict[str, Any] = {name: _secret(creds.get(name), f"credentials.{name}") for name in _SECRET_FIELDS if name != "username"}
    secrets["username"] = _text(creds.get("username"), "credentials.username")
    context = _context(record.get("context"), "context", extra)
    secrets["extra"] = extra
    return _Fields(
        integration=_text(record.get("integration"), "integration", required=True),
        tenant_id=_text(record.get("tenant_id"), "tenant_id", required=True, numbers=True),
        method=_method(record.get("authentication_method"), "authentication_method"),
        external_ref=_text(record.get("external_ref"), "external_ref", numbers=True),
        secrets=secrets,
        token_type=_text(record.get("token_type"), "token_type"),
        expires_at=_expiry(record.get("expires_at"), "expires_at", record.get("expires_in"), "expires_in", now),
        scopes=_scopes(record.get("scopes"), "scopes"),
        context=context,
        paths=_CANONICAL_PATHS,
    )


_PROFILES = {"canonical": _canonical, "truto": _truto, "nango": _nango}


def _check_profile(profile: str) -> None:
    if profile not in _PROFILES:
        raise ValueError(f"unknown import profile {profile!r}; expected one of {', '.join(PROFILES)}")


def _convert(record: object, environment: str, profile: str, now: datetime) -> tuple[ImportAccount, dict[str, str]]:
    if not isinstance(record, dict):
        raise RecordError("", "each record must be a JSON object")
    fields = _PROFILES[profile](record, _aware_utc(now))
    return _build(fields, environment=environment, profile=profile), fields.paths


def to_command(record: object, *, environment: str, profile: Profile, now: datetime) -> ImportAccount:
    """One record of the given profile as an ImportAccount; RecordError says why not."""
    _check_profile(profile)
    return _convert(record, environment, profile, now)[0]


def parse_import(
    body: bytes, content_type: str | None, *, environment: str, profile: Profile, now: datetime
) -> list[ParsedRecord]:
    """Every record of the body, in order, as a command or an error. Raises only for a bad profile.

    A record naming the same account (`account_identity`) as an earlier one is refused with
    "repeats line N", on its external_ref field (its tenant_id field when it has no external_ref)."""
    return list(iter_parse_import(body, content_type, environment=environment, profile=profile, now=now))


def iter_parse_import(
    body: bytes, content_type: str | None, *, environment: str, profile: Profile, now: datetime
) -> Iterator[ParsedRecord]:
    """parse_import, one record at a time (an import can start on the first records while the
    rest are parsed). The profile is checked at once, before the first record is asked for."""
    _check_profile(profile)
    return _parsed_records(body, content_type, environment, profile, now)


def _parsed_records(body: bytes, content_type: str | None, environment: str, profile: Profile,
                    now: datetime) -> Iterator[ParsedRecord]:
    seen: dict[str, int] = {}
    values = parse_body(body, content_type)
    # A few hundred records at a time, parsed, then converted: each stage's code stays in the
    # processor's caches (see service.handlers.accounts._new_account_streams).
    while parsed := list(itertools.islice(values, 256)):
        converted: list[tuple[int, ImportAccount | None, RecordError | dict[str, str]]] = []
        for line, value in parsed:
            if isinstance(value, RecordError):
                converted.append((line, None, value))
                continue
            try:
                converted.append((line, *_convert(value, environment, profile, now)))
            except RecordError as error:
                converted.append((line, None, error))
        for line, command, paths in converted:
            if command is None:
                yield ParsedRecord(line, None, paths)
                continue
            identity = account_identity(command.environment, command.integration, command.tenant_id,
                                        command.external_ref)
            first = seen.get(identity)
            if first is not None:
                field = paths["external_ref"] if command.external_ref else paths["tenant_id"]
                yield ParsedRecord(line, None, RecordError(field, f"repeats line {first}"))
                continue
            seen[identity] = line
            yield ParsedRecord(line, command, None)


# --------------------------------------------------------------------------- export


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    text = _aware_utc(moment).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def export_record(
    *,
    integration: str,
    tenant_id: str,
    authentication_method: str,
    external_ref: str | None,
    secrets: dict[str, Any],
    token_type: str | None,
    expires_at: datetime | None,
    scopes: tuple[str, ...] | list[str],
    context: dict[str, Any],
) -> dict[str, Any]:
    """The canonical-format record for an account; `secrets` as `Credentials.plaintext()` gives them.
    Importing it with profile "canonical" gives back an equal ImportAccount (source aside)."""
    unknown = set(secrets) - _CANONICAL_CREDENTIALS
    if unknown:
        raise ValueError(f"unknown secret fields: {', '.join(sorted(unknown))}")
    credentials: dict[str, Any] = {name: secrets[name] for name in _SECRET_FIELDS if secrets.get(name) is not None}
    if secrets.get("extra"):
        credentials["extra"] = dict(sorted(secrets["extra"].items()))
    return {
        "integration": integration,
        "tenant_id": tenant_id,
        "authentication_method": authentication_method,
        "external_ref": external_ref,
        "credentials": credentials,
        "token_type": token_type,
        "expires_at": _iso(expires_at),
        "scopes": list(scopes),
        "context": copy.deepcopy(context),
    }
