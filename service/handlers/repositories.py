"""Loading aggregates: from the stream-head snapshot when it is current, else by folding the stream."""

import uuid

from events.catalog.base import decode
from events.store import PostgresEventStore, StreamHead
from service.domain import account as account_domain
from service.domain import integration as integration_domain
from service.domain.account import AccountState
from service.domain.identity import account_stream, integration_stream
from service.domain.integration import IntegrationState


class IntegrationStates:
    """Integration states this process has loaded, each at the version it was folded at. One is
    reused only while its stream's head is still at that version, checked in the same read as the
    account's head, so a change made by any replica is seen by the next command."""

    def __init__(self, size: int = 1024):
        self._size = size
        self._states: dict[str, IntegrationState] = {}

    def get(self, stream: str) -> IntegrationState | None:
        return self._states.get(stream)

    def remember(self, stream: str, state: IntegrationState) -> None:
        if len(self._states) >= self._size:
            self._states.clear()  # a few hundred integrations at most; a full cache is a rare event
        self._states[stream] = state


async def load_account(store: PostgresEventStore, account_id: uuid.UUID) -> AccountState:
    """The account's current state; a blank state (version 0) when it does not exist."""
    stream = account_stream(account_id)
    return await _account_at(store, account_id, await store.head(stream))


async def load_integration(store: PostgresEventStore, environment: str, name: str) -> IntegrationState:
    stream = integration_stream(environment, name)
    return await _integration_at(store, environment, name, await store.head(stream))


async def load_account_and_integration(
    store: PostgresEventStore, integrations: IntegrationStates, account_id: uuid.UUID, environment: str, name: str
) -> tuple[AccountState, IntegrationState]:
    """The account and the integration it names, both as of one read of their heads."""
    account, integration = account_stream(account_id), integration_stream(environment, name)
    cached = integrations.get(integration)
    heads = await store.heads([account, integration], known={integration: cached.version} if cached else None)
    head = heads[integration]
    if cached is not None and head is not None and head.version == cached.version:
        integration_state = cached
    else:
        integration_state = await _integration_at(store, environment, name, head)
        if head is not None:
            integrations.remember(integration, integration_state)
    return await _account_at(store, account_id, heads[account]), integration_state


async def _account_at(store: PostgresEventStore, account_id: uuid.UUID, head: StreamHead | None) -> AccountState:
    if head is None:
        return AccountState.blank(account_id)
    if head.snapshot is not None and head.snapshot_version == head.version:
        return AccountState.model_validate(head.snapshot)
    state = AccountState.blank(account_id)
    for recorded in await store.read_stream(account_stream(account_id)):
        state = account_domain.evolve(state, decode(recorded.type, recorded.schema_version, recorded.data))
    return state


async def _integration_at(
    store: PostgresEventStore, environment: str, name: str, head: StreamHead | None
) -> IntegrationState:
    if head is None:
        return IntegrationState.blank(environment, name)
    if head.snapshot is not None and head.snapshot_version == head.version:
        return IntegrationState.model_validate(head.snapshot)
    state = IntegrationState.blank(environment, name)
    for recorded in await store.read_stream(integration_stream(environment, name)):
        state = integration_domain.evolve(state, decode(recorded.type, recorded.schema_version, recorded.data))
    return state
