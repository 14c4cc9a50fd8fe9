"""A pure fold of an account stream over stored payloads (dicts, no pydantic).

It yields exactly what the domain's AccountState.model_dump(mode="json") holds after the same
events (a test holds the two together); projections may not import the service, and folding plain
dicts is what lets a rebuild run at scan speed. Times stay the canonical strings they were stored as.
"""

from datetime import datetime
from typing import Any, Iterable

from events.merge_patch import compose_patches, merge_patch

Payload = dict[str, Any]
# Reads are audited as events but change nothing in the account except its version.
READS = frozenset({"CredentialsAccessed", "TokensExported"})


def blank(account_id: str) -> Payload:
    return {
        "account_id": account_id, "version": 0, "environment": None, "integration": None, "tenant_id": None,
        "external_ref": None, "authentication_method": None, "status": None, "status_reason": None, "context": {},
        "token_type": None, "expires_at": None, "scopes": [], "fingerprints": {}, "source": None,
        "created_at": None, "updated_at": None, "last_refreshed_at": None, "consecutive_refresh_failures": 0,
        "needs_reauth_since": None, "reactivation_count": 0, "deleted_at": None, "override": {},
        "override_hash": None, "override_version": 0, "shredded_key_id": None,
    }


def account_id_of(stream_id: str) -> str:
    return stream_id.removeprefix("account-")


def evolve(state: Payload, type_: str, data: Payload) -> Payload:
    """The state after one stored account event (a new dict; `state` is not changed)."""
    return evolve_in_place(dict(state), type_, data)


def evolve_in_place(state: Payload, type_: str, data: Payload) -> Payload:
    """evolve() for a caller that owns `state` (a rebuild's fold): no copy per event."""
    state["version"] += 1
    at = data.get("at")
    if type_ not in READS:
        state["updated_at"] = at
    # Branches in order of how common the event types are in a log (most are refreshes).
    if type_ == "TokenRefreshed":
        state["expires_at"] = data.get("expires_at")
        state["scopes"] = list(data.get("scopes", []))
        state["fingerprints"] = data["fingerprints"]
        state["last_refreshed_at"] = at
        state["consecutive_refresh_failures"] = 0
    elif type_ == "TokenRefreshFailed":
        state["consecutive_refresh_failures"] += 1
    elif type_ == "TokensImported":
        if data.get("external_ref") is not None:
            state["external_ref"] = data["external_ref"]
        state.update(source=data["source"], token_type=data.get("token_type"), expires_at=data.get("expires_at"),
                     scopes=list(data.get("scopes", [])), fingerprints=data["fingerprints"],
                     context=data.get("context", {}), consecutive_refresh_failures=0)
    elif type_ == "AccountOverrideChanged":
        restored = data.get("document")  # a roll-back replaces the whole document
        state.update(override=restored if restored is not None else compose_patches(state["override"], data["merge_patch"]),
                     override_hash=data["resulting_hash"], override_version=state["version"])
    elif type_ == "AccountValidated":
        state.update(status="active", status_reason=None)
    elif type_ == "AccountConnecting":
        for name in ("environment", "integration", "tenant_id", "external_ref", "authentication_method", "context",
                     "source"):
            state[name] = data.get(name)
        state["context"] = data.get("context", {})
        state["status"] = "connecting"
        state["created_at"] = at
    elif type_ == "AccountNeedsReauth":
        state.update(status="needs_reauth", status_reason=data["reason"], needs_reauth_since=data["since"])
    elif type_ == "AccountReactivated":
        state.update(status="active", status_reason=None, needs_reauth_since=None,
                     reactivation_count=state["reactivation_count"] + 1)
    elif type_ == "ValidationFailed":
        state.update(status="validation_error", status_reason=data.get("reason"))
    elif type_ == "PostInstallFailed":
        state.update(status="post_install_error", status_reason=data.get("reason"))
    elif type_ == "AccountContextChanged":
        state["context"] = merge_patch(state["context"], data["merge_patch"])
    elif type_ == "AccountDeleted":
        state.update(status="deleted", status_reason=data.get("reason"), deleted_at=at, needs_reauth_since=None)
    elif type_ == "KeyShredded":
        state["shredded_key_id"] = data["key_id"]
    return state


def fold(account_id: str, events: Iterable[tuple[str, Payload]]) -> Payload:
    state = blank(account_id)
    for type_, data in events:
        state = evolve(state, type_, data)
    return state


def as_of(account_id: str, events: Iterable[tuple[datetime, str, Payload]], instant: datetime) -> Payload | None:
    """The account as it stood at `instant`: every event that occurred at or before it, folded.
    None when the account did not exist yet. `events` in stream order."""
    state = blank(account_id)
    for occurred_at, type_, data in events:
        if occurred_at > instant:
            break
        state = evolve(state, type_, data)
    return state if state["status"] is not None else None
