"""OAuth failures, classified the way the account lifecycle needs them (DESIGN "Token lifecycle").

- `invalid_grant`: the grant is dead (revoked, expired, already-used refresh token, a 401 from the
  token endpoint, an access token the resource server refuses): the account needs re-authentication.
- `invalid_client`: the OAuth app (client id/secret, redirect URI, grant type, scopes, URLs) is
  wrong: flag the integration, don't mark its accounts.
- `transient`: the provider is overloaded or failing (429, 5xx, 408, temporarily_unavailable,
  server_error, a malformed success): retry with backoff, honouring `retry_after`.
- `network`: the request never got an HTTP answer (DNS, connect, TLS, reset, timeout): retry.

An `OAuthError` never carries a token, a refresh token, an authorization code or a client secret:
the text it keeps from the provider is redacted against every secret of the request (and their
URL-encoded forms, and any run of 12+ characters copied out of one) before it is truncated.
Values shorter than 4 characters are not treated as secrets.
"""

import re
from typing import Iterable, Literal, get_args
from urllib.parse import quote, quote_plus

FailureClass = Literal["invalid_grant", "invalid_client", "transient", "network"]
FAILURE_CLASSES: frozenset[str] = frozenset(get_args(FailureClass))

REDACTED = "[REDACTED]"
DESCRIPTION_LIMIT = 300
PROVIDER_ERROR_LIMIT = 100
_MIN_SECRET = 4  # shorter "secrets" (test fixtures) would garble every message and guard nothing
_FRAGMENT = 12  # a run this long copied out of a secret is redacted (covers echoes cut mid-token)
_SCAN_LIMIT = 4096  # provider text longer than this is cut before it is scanned
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def _variants(secret: str) -> list[str]:
    forms = {secret, quote(secret, safe=""), quote_plus(secret, safe="")}
    return sorted((form for form in forms if form), key=len, reverse=True)


def _redact_fragments(text: str, secret: str) -> str:
    if len(secret) < _FRAGMENT or len(text) < _FRAGMENT:
        return text
    out: list[str] = []
    start = i = 0
    while i <= len(text) - _FRAGMENT:
        if text[i : i + _FRAGMENT] in secret:
            end = i + _FRAGMENT
            while end < len(text) and text[i : end + 1] in secret:
                end += 1
            out.append(text[start:i])
            out.append(REDACTED)
            start = i = end
        else:
            i += 1
    out.append(text[start:])
    return "".join(out)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret (raw, URL-encoded, or a 12+ character piece of one) replaced."""
    present = [secret for secret in secrets if secret and len(secret) >= _MIN_SECRET]
    for secret in sorted(present, key=len, reverse=True):
        for form in _variants(secret):
            text = text.replace(form, REDACTED)
    for secret in present:
        text = _redact_fragments(text, secret)
    return text


def sanitize_text(text: object, secrets: Iterable[str | None] = (), limit: int = DESCRIPTION_LIMIT) -> str | None:
    """Provider text made safe to store and log: one line, secrets redacted, at most `limit` chars."""
    if text is None:
        return None
    value = text if isinstance(text, str) else str(text)
    value = _CONTROL.sub(" ", value[:_SCAN_LIMIT]).strip()
    value = redact(value, tuple(secrets))
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value or None


class OAuthError(Exception):
    """A classified OAuth failure. Its text never holds a secret (see the module docstring).

    `secrets` are the values of the request that must not leak (refresh token, code, code
    verifier, client secret, access token); they are used to redact and are not kept.
    """

    def __init__(
        self,
        failure_class: FailureClass,
        *,
        http_status: int | None = None,
        provider_error: str | None = None,
        description: str | None = None,
        retry_after: float | None = None,
        secrets: Iterable[str | None] = (),
    ) -> None:
        if failure_class not in FAILURE_CLASSES:
            raise ValueError(f"unknown failure class {failure_class!r}")
        secrets = tuple(secrets)
        self.failure_class: FailureClass = failure_class
        self.http_status = http_status
        self.provider_error = sanitize_text(provider_error, secrets, PROVIDER_ERROR_LIMIT)
        self.description = sanitize_text(description, secrets, DESCRIPTION_LIMIT)
        self.retry_after = None if retry_after is None else max(0.0, float(retry_after))
        super().__init__(self._message())

    @property
    def retryable(self) -> bool:
        """Transient and network failures are worth retrying; the others need a human."""
        return self.failure_class in ("transient", "network")

    def _message(self) -> str:
        parts = [self.failure_class]
        details = []
        if self.http_status is not None:
            details.append(f"HTTP {self.http_status}")
        if self.provider_error:
            details.append(f"error={self.provider_error}")
        if self.retry_after is not None:
            details.append(f"retry after {self.retry_after:g}s")
        if details:
            parts.append(f"({', '.join(details)})")
        text = " ".join(parts)
        return f"{text}: {self.description}" if self.description else text

    def __repr__(self) -> str:
        return f"OAuthError({self._message()!r})"
