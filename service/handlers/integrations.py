"""Handlers for integrations and their bring-your-own OAuth clients."""

from events.catalog.integration import OAuthClientConfigured
from events.envelope import uuid7
from events.errors import ConcurrencyError
from service.crypto.envelope import encrypt, event_aad
from service.domain import integration as integration_domain
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient
from service.domain.identity import integration_stream
from service.domain.integration import IntegrationState
from service.handlers.repositories import load_integration
from service.handlers.uow import UnitOfWork, snapshot_of

_ATTEMPTS = 5


async def configure_integration(cmd: ConfigureIntegration, uow: UnitOfWork) -> IntegrationState:
    stream = integration_stream(cmd.environment, cmd.name)
    for _ in range(_ATTEMPTS):
        state = await load_integration(uow.store, cmd.environment, cmd.name)
        now = uow.clock()
        events = integration_domain.decide(state, cmd, now)
        if not events:
            return state
        new_state = _fold(state, events)
        try:
            await uow.store.append(stream, [uow.new_event(e, now) for e in events], state.version,
                                   snapshot=snapshot_of(new_state))
        except ConcurrencyError:
            continue
        return new_state
    raise ConcurrencyError(stream, state.version, -1)


async def configure_oauth_client(cmd: ConfigureOAuthClient, uow: UnitOfWork) -> IntegrationState:
    """The client secret is stored encrypted in the event; the event data holds its fingerprint."""
    stream = integration_stream(cmd.environment, cmd.integration)
    secret = cmd.client_secret.get_secret_value()
    fingerprint = uow.fingerprinter.fingerprint(secret)
    for _ in range(_ATTEMPTS):
        state = await load_integration(uow.store, cmd.environment, cmd.integration)
        now = uow.clock()
        events = integration_domain.decide(state, cmd, now, client_secret_fingerprint=fingerprint)
        if not events:
            return state
        data_key = await uow.data_keys.get_or_create(stream)
        new_events = []
        for event in events:
            if isinstance(event, OAuthClientConfigured):
                event_id = uuid7()
                ciphertext = encrypt(data_key.key, {"client_secret": secret}, event_aad(stream, event_id))
                new_events.append(uow.new_event(event, now, event_id=event_id, secret=ciphertext, key_id=data_key.key_id))
            else:
                new_events.append(uow.new_event(event, now))
        new_state = _fold(state, events)
        try:
            await uow.store.append(stream, new_events, state.version, snapshot=snapshot_of(new_state))
        except ConcurrencyError:
            continue
        return new_state
    raise ConcurrencyError(stream, state.version, -1)


def _fold(state: IntegrationState, events) -> IntegrationState:
    for event in events:
        state = integration_domain.evolve(state, event)
    return state
