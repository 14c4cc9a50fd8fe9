"""Override commands and queries: environment and account overrides (merge patches), context
changes, effective configuration, history and roll-back.

Every mapping string of a patch is compiled before anything is loaded or appended, so a bad
expression leaves the log untouched."""

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from events.canonical import canonical_json
from events.catalog.account import AccountOverrideChanged
from events.catalog.base import decode
from events.catalog.environment import EnvironmentOverrideChanged
from events.errors import InvalidEventError
from events.store import PostgresEventStore
from service.domain import account as account_domain
from service.domain import environment as environment_domain
from service.domain.account import AccountState
from service.domain.environment import EnvironmentState
from service.domain.errors import DomainError, InvalidConfiguration
from service.domain.identity import account_stream, environment_stream
from service.domain.mappings import validate_mappings
from service.domain.overrides import (
    compose_patches,
    diff_patch,
    document_hash,
    effective_integration_settings,
    effective_method_config,
    merge_patch,
    removed_method_fields,
)
from service.domain.secret_names import secret_field
from service.handlers.accounts import AccountNotFound, load_existing_account
from service.handlers.commit import decide_and_append
from service.handlers.repositories import load_integration
from service.handlers.uow import UnitOfWork

ACCOUNT_OVERRIDE_EVENT = AccountOverrideChanged.type
ENVIRONMENT_OVERRIDE_EVENT = EnvironmentOverrideChanged.type


class UnknownVersion(DomainError):
    """A roll-back names a version that is not one of the override's versions."""


class UnconfiguredMethod(AccountNotFound):
    """No level configures the model/resource/method asked for (a 404)."""


def check_patch(patch: dict[str, Any], path: str = "") -> None:
    """A patch the log can hold exactly, holding no secret, whose every mapping compiles; raises
    naming the path (never the value)."""
    try:
        canonical_json(patch, what=path or "body")
    except InvalidEventError as error:
        raise InvalidConfiguration(str(error), field=path or None) from None
    # Overrides are stored in clear: a secret-named value there would leak into the log and NATS.
    if (field := secret_field(patch, path)) is not None:
        raise InvalidConfiguration("secret values belong in the credentials, not in an override", field=field)
    validate_mappings(patch, path)


async def load_environment(store: PostgresEventStore, environment: str) -> EnvironmentState:
    stream = environment_stream(environment)
    head = await store.head(stream)
    if head is None:
        return EnvironmentState.blank(environment)
    if head.snapshot is not None and head.snapshot_version == head.version:
        return EnvironmentState.model_validate(head.snapshot)
    state = EnvironmentState.blank(environment)
    for recorded in await store.read_stream(stream):
        state = environment_domain.evolve(state, decode(recorded.type, recorded.schema_version, recorded.data))
    return state


async def change_environment_override(
    uow: UnitOfWork, environment: str, patch: dict[str, Any] | None = None, *,
    target: dict[str, Any] | None = None, restored_version: int | None = None,
) -> tuple[EnvironmentState, bool]:
    """Apply a merge patch to the environment override, or make it equal `target` (a roll-back);
    (state, whether an event was appended)."""
    if patch is not None:
        check_patch(patch)

    def decide(state: EnvironmentState, now: datetime):
        # A roll-back replaces the document decided on, so a change that lands meanwhile is undone
        # too: the result is exactly the version restored. Its patch only describes the change.
        if target is None:
            return environment_domain.change_override(state, patch, document_hash(compose_patches(state.override, patch)),
                                                      now)
        return environment_domain.change_override(state, diff_patch(state.override, target), document_hash(target), now,
                                                  restored_version=restored_version, document=target)

    state, events = await decide_and_append(
        uow, environment_stream(environment), load=lambda: load_environment(uow.store, environment),
        decide=decide, evolve=environment_domain.evolve,
    )
    return state, bool(events)


async def change_account(
    uow: UnitOfWork, account_id: uuid.UUID, *, override_patch: dict[str, Any] | None = None,
    context_patch: dict[str, Any] | None = None, override_target: dict[str, Any] | None = None,
    restored_version: int | None = None,
) -> tuple[AccountState, bool]:
    """Apply merge patches to the account override and/or its non-secret context, in one append;
    `override_target` instead of a patch makes the override equal it (a roll-back)."""
    if override_patch is not None:
        check_patch(override_patch)
    if context_patch is not None:
        try:
            canonical_json(context_patch, what="context")
        except InvalidEventError as error:
            raise InvalidConfiguration(str(error), field="context") from None

    def decide(state: AccountState, now: datetime):
        account_domain.require_live(state)  # a deleted account is refused even by a change of nothing
        events = []
        if override_target is not None:
            events += account_domain.change_override(
                state, diff_patch(state.override, override_target), document_hash(override_target), now,
                restored_version=restored_version, document=override_target)
        elif override_patch is not None:
            events += account_domain.change_override(
                state, override_patch, document_hash(compose_patches(state.override, override_patch)), now)
        if context_patch is not None:
            context = merge_patch(state.context, context_patch)
            events += account_domain.change_context(state, context_patch, document_hash(context), now)
        return events

    state, events = await decide_and_append(
        uow, account_stream(account_id), load=lambda: load_existing_account(uow, account_id),
        decide=decide, evolve=account_domain.evolve,
    )
    return state, bool(events)


@dataclass(frozen=True)
class OverrideVersion:
    version: int  # the stream version of the change
    occurred_at: datetime
    actor: str
    merge_patch: dict[str, Any]
    resulting_hash: str
    restored_version: int | None
    document: dict[str, Any]  # the override as it stood after this change

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version, "occurred_at": self.occurred_at.isoformat().replace("+00:00", "Z"),
            "actor": self.actor, "merge_patch": self.merge_patch, "resulting_hash": self.resulting_hash,
            "restored_version": self.restored_version,
        }


async def override_history(uow: UnitOfWork, stream: str, event_type: str) -> list[OverrideVersion]:
    """Every change of a stream's override, oldest first, with the document each one produced.
    Only the override events are read: an account stream is mostly refreshes."""
    rows = await uow.pool.fetch(
        "SELECT version, occurred_at, actor, data FROM events WHERE stream_id = $1 AND type = $2 ORDER BY version",
        stream, event_type,
    )
    versions, document = [], {}
    for row in rows:
        data = json.loads(row["data"])
        restored = data.get("document")
        document = restored if restored is not None else compose_patches(document, data["merge_patch"])
        versions.append(OverrideVersion(
            row["version"], row["occurred_at"], row["actor"], data["merge_patch"], data["resulting_hash"],
            data.get("restored_version"), document,
        ))
    return versions


def _document_at(history: list[OverrideVersion], version: int) -> dict[str, Any]:
    if version == 0:
        return {}  # before the first change: no override
    for entry in history:
        if entry.version == version:
            return entry.document
    known = ", ".join(str(e.version) for e in history) or "none"
    raise UnknownVersion(f"version {version} is not an override version (0 or one of: {known})", field="version")


async def roll_back_environment(uow: UnitOfWork, environment: str, version: int) -> tuple[EnvironmentState, bool]:
    """One new event whose resulting override equals the one as of `version`."""
    history = await override_history(uow, environment_stream(environment), ENVIRONMENT_OVERRIDE_EVENT)
    return await change_environment_override(uow, environment, target=_document_at(history, version),
                                             restored_version=version)


async def roll_back_account(uow: UnitOfWork, account_id: uuid.UUID, version: int) -> tuple[AccountState, bool]:
    """One new event whose resulting override equals the one as of `version`."""
    history = await override_history(uow, account_stream(account_id), ACCOUNT_OVERRIDE_EVENT)
    return await change_account(uow, account_id, override_target=_document_at(history, version),
                                restored_version=version)


@dataclass(frozen=True)
class EffectiveConfig:
    config: dict[str, Any]
    provenance: dict[str, str]
    removed: dict[str, str]  # fields a lower level set and a higher level's null deleted: by which
    integration_settings: dict[str, Any]
    integration_settings_provenance: dict[str, str]
    versions: dict[str, int]
    hashes: dict[str, str]


async def effective_config(
    uow: UnitOfWork, account: AccountState, model: str, resource: str, method: str
) -> EffectiveConfig:
    """The merged method configuration of an account; UnconfiguredMethod when no level has it."""
    integration = await load_integration(uow.store, account.environment, account.integration)
    environment = await load_environment(uow.store, account.environment)
    levels = dict(integration_config=integration.config, environment_override=environment.override,
                  account_override=account.override, integration=account.integration,
                  model=model, resource=resource, method=method)
    config, provenance = effective_method_config(**levels)
    if config is None:
        raise UnconfiguredMethod(f"no level configures {model}/{resource}/{method} for this account",
                                 field="method")
    settings, settings_provenance = effective_integration_settings(
        integration_config=integration.config, environment_override=environment.override,
        account_override=account.override, integration=account.integration,
    )
    return EffectiveConfig(
        config=config, provenance=provenance, removed=removed_method_fields(**levels),
        integration_settings=settings, integration_settings_provenance=settings_provenance,
        versions={"integration": integration.version, "environment": environment.version,
                  "account": account.override_version},
        hashes={"integration": document_hash(integration.config), "environment": document_hash(environment.override),
                "account": document_hash(account.override)},
    )
