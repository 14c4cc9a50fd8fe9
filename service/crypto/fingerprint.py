"""Token fingerprints: HMAC-SHA256 under an audit key, truncated.

The same token always has the same fingerprint (under one audit key), so auditors and NATS
subscribers can tell "the refresh token changed" or "these two accounts hold the same token"
without ever seeing a token. The audit key is separate from the keyring and survives KEK rotation.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
from typing import Any

PREFIX = "fp_"
HEX_CHARS = 16
MIN_KEY_BYTES = 16
# Top-level secret fields of a credentials dict; `extra` (a nested dict) is secret field by field.
SECRET_FIELDS = ("access_token", "refresh_token", "id_token", "api_key", "password", "client_secret")


class AuditKeyError(ValueError):
    """The audit key is unusable; the message never contains it."""


def generate_audit_key() -> str:
    """A fresh 32-byte audit key, base64 (for LINKLEDGER_AUDIT_KEY)."""
    return base64.b64encode(os.urandom(32)).decode()


class Fingerprinter:
    __slots__ = ("_key", "_keyed")

    def __init__(self, audit_key: bytes):
        if not isinstance(audit_key, (bytes, bytearray)) or len(audit_key) < MIN_KEY_BYTES:
            raise AuditKeyError(f"audit key: must be at least {MIN_KEY_BYTES} bytes")
        self._key = bytes(audit_key)
        # The HMAC keyed once: each fingerprint starts from a copy of it, instead of keying anew.
        self._keyed = hmac.new(self._key, digestmod=hashlib.sha256)

    def __reduce__(self):
        return Fingerprinter, (self._key,)  # import workers get one; the keyed HMAC is made there

    @classmethod
    def from_base64(cls, text: str) -> "Fingerprinter":
        """From LINKLEDGER_AUDIT_KEY: base64 (standard or url-safe, padding optional) of 32 bytes."""
        if not isinstance(text, str) or not text.strip():
            raise AuditKeyError("audit key: not set")
        normalized = text.strip().rstrip("=").replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(normalized + "=" * (-len(normalized) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise AuditKeyError("audit key: not base64 (standard or url-safe)") from None
        if len(raw) != 32:
            raise AuditKeyError(f"audit key: is {len(raw)} bytes, expected 32")
        return cls(raw)

    def __repr__(self) -> str:
        return "Fingerprinter(audit_key=<hidden>)"

    def fingerprint(self, value: str | bytes) -> str:
        mac = self._keyed.copy()
        mac.update(value.encode() if isinstance(value, str) else bytes(value))
        return PREFIX + mac.hexdigest()[:HEX_CHARS]

    def _of(self, value: Any) -> str:
        if isinstance(value, (str, bytes, bytearray)):
            return self.fingerprint(value)
        return self.fingerprint(json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))

    def fingerprints(self, plaintext: dict[str, Any]) -> dict[str, str]:
        """A fingerprint per secret field present (null values skipped); `username` is not secret."""
        found: dict[str, str] = {}
        for name in SECRET_FIELDS:
            value = plaintext.get(name)
            if value is not None:
                found[name] = self._of(value)
        extra = plaintext.get("extra")
        if isinstance(extra, dict):
            for name, value in extra.items():
                if value is not None:
                    found[f"extra.{name}"] = self._of(value)
        return dict(sorted(found.items()))
