"""Loading aggregates: from the stream-head snapshot when it is current, else by folding the stream."""

import uuid

from events.catalog.base import decode
from events.store import PostgresEventStore
from service.domain import account as account_domain
from service.domain import integration as integration_domain
from service.domain.account import AccountState
from service.domain.identity import account_stream, integration_stream
from service.domain.integration import IntegrationState


async def load_account(store: PostgresEventStore, account_id: uuid.UUID) -> AccountState:
    """The account's current state; a blank state (version 0) when it does not exist."""
    stream = account_stream(account_id)
    head = await store.head(stream)
    if head is None:
        return AccountState.blank(account_id)
    if head.snapshot is not None and head.snapshot_version == head.version:
        return AccountState.model_validate(head.snapshot)
    state = AccountState.blank(account_id)
    for recorded in await store.read_stream(stream):
        state = account_domain.evolve(state, decode(recorded.type, recorded.schema_version, recorded.data))
    return state


async def load_integration(store: PostgresEventStore, environment: str, name: str) -> IntegrationState:
    stream = integration_stream(environment, name)
    head = await store.head(stream)
    if head is None:
        return IntegrationState.blank(environment, name)
    if head.snapshot is not None and head.snapshot_version == head.version:
        return IntegrationState.model_validate(head.snapshot)
    state = IntegrationState.blank(environment, name)
    for recorded in await store.read_stream(stream):
        state = integration_domain.evolve(state, decode(recorded.type, recorded.schema_version, recorded.data))
    return state
