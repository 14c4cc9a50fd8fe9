"""Handlers for integrations and their bring-your-own OAuth clients."""

from events.catalog.integration import OAuthClientConfigured
from events.envelope import uuid7
from service.crypto.envelope import encrypt, event_aad
from service.domain import integration as integration_domain
from service.domain.commands import ConfigureIntegration, ConfigureOAuthClient
from service.domain.identity import integration_stream
from service.domain.integration import IntegrationState
from service.handlers.commit import decide_and_append
from service.handlers.repositories import load_integration
from service.handlers.uow import UnitOfWork


async def configure_integration(cmd: ConfigureIntegration, uow: UnitOfWork) -> IntegrationState:
    state, _ = await decide_and_append(
        uow, integration_stream(cmd.environment, cmd.name),
        load=lambda: load_integration(uow.store, cmd.environment, cmd.name),
        decide=lambda state, now: integration_domain.decide(state, cmd, now),
        evolve=integration_domain.evolve,
    )
    return state


async def configure_oauth_client(cmd: ConfigureOAuthClient, uow: UnitOfWork) -> IntegrationState:
    """The client secret is stored encrypted in the event; the event data holds its fingerprint."""
    stream = integration_stream(cmd.environment, cmd.integration)
    secret = cmd.client_secret.get_secret_value()
    fingerprint = uow.fingerprinter.fingerprint(secret)
    data_key = await uow.data_keys.get_or_create(stream)

    def encode(events, now):
        out = []
        for event in events:
            if isinstance(event, OAuthClientConfigured):
                event_id = uuid7()
                ciphertext = encrypt(data_key.key, {"client_secret": secret}, event_aad(stream, event_id))
                out.append(uow.new_event(event, now, event_id=event_id, secret=ciphertext, key_id=data_key.key_id))
            else:
                out.append(uow.new_event(event, now))
        return out

    state, _ = await decide_and_append(
        uow, stream,
        load=lambda: load_integration(uow.store, cmd.environment, cmd.integration),
        decide=lambda state, now: integration_domain.decide(state, cmd, now, client_secret_fingerprint=fingerprint),
        evolve=integration_domain.evolve, encode=encode,
    )
    return state
