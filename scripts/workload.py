"""Plausible account histories for tests and benchmarks: imports, refreshes, failures, needs_reauth,
reactivations, override changes, reads, deletions. Payloads have the shape the catalog encodes."""

import random
import secrets
import uuid
from datetime import datetime, timedelta, timezone

from events.hashing import format_instant
from projections import account_fold

ENVIRONMENTS = ("prod", "staging")
INTEGRATIONS = ("salesforce", "hubspot", "bamboohr")
ACTORS = ("system:refresher", "key:key_ops", "key:key_import", "system:health")


def _fp() -> str:
    return "fp_" + secrets.token_hex(8)


def opening(rng: random.Random, account_id: uuid.UUID, at: datetime) -> list[tuple[str, dict]]:
    """The events that bring an account into custody: connecting, tokens imported, validated."""
    when = format_instant(at)
    environment, integration = rng.choice(ENVIRONMENTS), rng.choice(INTEGRATIONS)
    tenant = f"tenant-{account_id.hex[:12]}"
    return [
        ("AccountConnecting", {"account_id": str(account_id), "at": when, "authentication_method": "oauth2",
                               "context": {"instance_url": f"https://{tenant}.example.com"}, "environment": environment,
                               "external_ref": f"ext-{account_id.hex[:16]}", "integration": integration,
                               "source": "truto", "tenant_id": tenant}),
        ("TokensImported", {"at": when, "context": {"instance_url": f"https://{tenant}.example.com"},
                            "expires_at": format_instant(at + timedelta(hours=1)), "external_ref": f"ext-{account_id.hex[:16]}",
                            "fingerprints": {"access_token": _fp(), "refresh_token": _fp()}, "scopes": ["api"],
                            "source": "truto", "token_type": "Bearer"}),
        ("AccountValidated", {"at": when, "how": "import"}),
    ]


def next_events(rng: random.Random, state: dict, at: datetime) -> list[tuple[str, dict]]:
    """One command's worth of events for an account in `state` (account_fold's shape)."""
    when = format_instant(at)
    status = state["status"]
    fps = dict(state["fingerprints"])
    roll = rng.random()
    if status == "deleted":
        return []
    if status == "needs_reauth":
        since = state["needs_reauth_since"]
        after = max(0, int((at - datetime.fromisoformat(since.replace("Z", "+00:00"))).total_seconds())) if since else 0
        if roll < 0.3:
            return [("TokenRefreshFailed", {"at": when, "attempt": rng.randint(1, 5), "failure_class": "invalid_grant",
                                            "http_status": 400, "provider_error": "invalid_grant", "retry_at": None})]
        if roll < 0.7:
            return [("TokenRefreshed", {"at": when, "expires_at": format_instant(at + timedelta(hours=1)),
                                        "fingerprints": {**fps, "access_token": _fp()}, "rotated": False,
                                        "scopes": state["scopes"], "scopes_changed": False}),
                    ("AccountReactivated", {"after_seconds": after, "at": when, "how": "refresh"})]
        return [("TokensImported", {"at": when, "context": state["context"], "expires_at": format_instant(at + timedelta(hours=1)),
                                    "external_ref": state["external_ref"],
                                    "fingerprints": {"access_token": _fp(), "refresh_token": _fp()},
                                    "scopes": state["scopes"], "source": "truto", "token_type": "Bearer"}),
                ("AccountReactivated", {"after_seconds": after, "at": when, "how": "tokens_imported"})]
    if status in ("connecting", "validation_error"):
        if roll < 0.8:
            return [("AccountValidated", {"at": when, "how": "retry"})]
        return [("ValidationFailed", {"at": when, "reason": rng.choice(["401 from /userinfo", "timeout"])})]
    if roll < 0.55:
        rotated = rng.random() < 0.3
        new = {"access_token": _fp(), **({"refresh_token": _fp()} if rotated else {})}
        return [("TokenRefreshed", {"at": when, "expires_at": format_instant(at + timedelta(hours=1)),
                                    "fingerprints": {**fps, **new}, "rotated": rotated, "scopes": state["scopes"],
                                    "scopes_changed": False})]
    if roll < 0.65:
        return [("TokenRefreshFailed", {"at": when, "attempt": rng.randint(1, 3), "failure_class": "transient",
                                        "http_status": 503, "provider_error": None,
                                        "retry_at": format_instant(at + timedelta(seconds=30))})]
    if roll < 0.72:
        return [("TokenRefreshFailed", {"at": when, "attempt": 1, "failure_class": "invalid_grant", "http_status": 400,
                                        "provider_error": "invalid_grant", "retry_at": None}),
                ("AccountNeedsReauth", {"at": when, "reason": "invalid_grant", "since": when})]
    if roll < 0.8:
        patch = {"unified_model_override": {"crm": {"contacts": {"list": {"response_mapping": rng.choice(
            ["$.records", "$.data", None])}}}}}
        return [("AccountOverrideChanged", {"at": when, "level": "account", "merge_patch": patch,
                                            "resulting_hash": secrets.token_hex(8)})]
    if roll < 0.995:
        return [("CredentialsAccessed", {"accessor": "key_svc", "at": when, "count": rng.randint(1, 50),
                                         "first_at": when, "last_at": when})]
    return [("AccountDeleted", {"at": when, "reason": "customer left"}), ("KeyShredded", {"at": when, "key_id": "dk-1"})]


def evolve_all(state: dict, events: list[tuple[str, dict]]) -> dict:
    for type_, data in events:
        state = account_fold.evolve(state, type_, data)
    return state


def clock(start: datetime | None = None, step_seconds: int = 7):
    """Monotonic event times, far enough apart that stuck-in-needs_reauth and reconnect times vary."""
    moment = [start or datetime(2026, 1, 1, tzinfo=timezone.utc)]

    def tick() -> datetime:
        moment[0] += timedelta(seconds=step_seconds, microseconds=random.randrange(1_000_000))
        return moment[0]
    return tick
