"""Integrations: definitions and BYO OAuth clients, per environment. Pure decide/evolve."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from events.canonical import canonical_json
from events.catalog.base import Event
from events.catalog.integration import IntegrationConfigured, IntegrationFlagged, OAuthClientConfigured
from events.errors import InvalidEventError
from service.domain.commands import AuthenticationMethod, ConfigureIntegration, ConfigureOAuthClient
from service.domain.errors import DomainError, InvalidConfiguration, UnknownIntegration


# When an imported account's health check runs: at once (the refresh worker), or at its first token
# read (so imported tokens stay untouched, not even refreshed, until someone uses the account).
HEALTH_CHECK_AT_IMPORT, HEALTH_CHECK_AT_FIRST_USE = "import", "first_use"
HEALTH_CHECK_WHEN = (HEALTH_CHECK_AT_IMPORT, HEALTH_CHECK_AT_FIRST_USE)


class IntegrationState(BaseModel):
    """An integration as folded from its stream; also the stream-head snapshot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: str
    name: str
    version: int = 0
    configured: bool = False
    display_name: str | None = None
    authentication_methods: tuple[AuthenticationMethod, ...] = ()
    health_check: dict[str, str] | None = None
    config: dict[str, Any] = {}
    # The OAuthClientConfigured payload minus environment/integration: client_id, urls, scopes,
    # client_secret_fingerprint. Never the secret itself.
    oauth_client: dict[str, Any] | None = None
    flagged: dict[str, Any] | None = None  # {"reason": ..., "detail": ...} while the OAuth app is broken

    @classmethod
    def blank(cls, environment: str, name: str) -> "IntegrationState":
        return cls(environment=environment, name=name)

    def allows(self, method: str) -> bool:
        return self.configured and method in self.authentication_methods


def health_check_at_first_use(state: "IntegrationState") -> bool:
    return bool(state.health_check) and state.health_check.get("when") == HEALTH_CHECK_AT_FIRST_USE


def _check_target(state: IntegrationState, environment: str, name: str) -> None:
    if (state.environment, state.name) != (environment, name):
        raise ValueError(f"command for {environment}/{name} given the state of {state.environment}/{state.name}")


def decide(
    state: IntegrationState,
    command: ConfigureIntegration | ConfigureOAuthClient,
    now: datetime,
    *,
    client_secret_fingerprint: str | None = None,
) -> list[Event]:
    """The events a command produces; [] when it changes nothing. Raises DomainError on refusal."""
    if isinstance(command, ConfigureIntegration):
        return _configure(state, command)
    if isinstance(command, ConfigureOAuthClient):
        return _configure_oauth_client(state, command, client_secret_fingerprint)
    raise DomainError(f"{type(command).__name__} is not an integration command")


def _configure(state: IntegrationState, command: ConfigureIntegration) -> list[Event]:
    _check_target(state, command.environment, command.name)
    methods = tuple(dict.fromkeys(command.authentication_methods))
    if not methods:
        raise InvalidConfiguration("at least one authentication method is required", field="authentication_methods")
    try:
        canonical_json(command.config, what="config")
    except InvalidEventError as error:
        raise InvalidConfiguration(str(error), field="config") from None
    when = (command.health_check or {}).get("when", HEALTH_CHECK_AT_IMPORT)
    if when not in HEALTH_CHECK_WHEN:
        raise InvalidConfiguration(f"health_check.when must be {' or '.join(HEALTH_CHECK_WHEN)}, not {when!r}",
                                   field="health_check.when")
    event = IntegrationConfigured(
        environment=command.environment,
        name=command.name,
        display_name=command.display_name or command.name,
        authentication_methods=methods,
        health_check=dict(command.health_check) if command.health_check else None,
        config=command.config,
    )
    if state.configured and (
        state.display_name,
        state.authentication_methods,
        state.health_check,
        state.config,
    ) == (event.display_name, event.authentication_methods, event.health_check, event.config):
        return []
    return [event]


def _oauth_client_payload(event: OAuthClientConfigured) -> dict[str, Any]:
    return event.model_dump(mode="json", exclude={"environment", "integration"})


def _configure_oauth_client(
    state: IntegrationState, command: ConfigureOAuthClient, client_secret_fingerprint: str | None
) -> list[Event]:
    _check_target(state, command.environment, command.integration)
    if not state.configured:
        raise UnknownIntegration(
            f"integration {command.integration!r} is not configured in environment {command.environment!r}",
            field="integration",
        )
    if client_secret_fingerprint is None:
        raise ValueError("client_secret_fingerprint is required: the caller fingerprints the client secret")
    event = OAuthClientConfigured(
        environment=command.environment,
        integration=command.integration,
        client_id=command.client_id,
        client_secret_fingerprint=client_secret_fingerprint,
        authorize_url=command.authorize_url,
        token_url=command.token_url,
        revocation_url=command.revocation_url,
        userinfo_url=command.userinfo_url,
        client_authentication=command.client_authentication,
        scopes=command.scopes,
    )
    if state.oauth_client == _oauth_client_payload(event):
        return []
    return [event]


def flag(state: IntegrationState, reason: str, detail: str | None = None) -> list[Event]:
    """Flag a broken OAuth app (e.g. invalid_client) once; [] if already flagged for that reason."""
    if not state.configured:
        raise UnknownIntegration(f"integration {state.name!r} is not configured", field="integration")
    if state.flagged is not None and state.flagged.get("reason") == reason:
        return []
    return [IntegrationFlagged(environment=state.environment, integration=state.name, reason=reason, detail=detail)]


def evolve(state: IntegrationState, event: Event) -> IntegrationState:
    version = state.version + 1
    if isinstance(event, IntegrationConfigured):
        return state.model_copy(
            update={
                "version": version,
                "configured": True,
                "display_name": event.display_name,
                "authentication_methods": event.authentication_methods,
                "health_check": event.health_check,
                "config": event.config,
            }
        )
    if isinstance(event, OAuthClientConfigured):
        # A new client is the fix for a flagged app: the flag is cleared.
        return state.model_copy(update={"version": version, "oauth_client": _oauth_client_payload(event), "flagged": None})
    if isinstance(event, IntegrationFlagged):
        return state.model_copy(update={"version": version, "flagged": {"reason": event.reason, "detail": event.detail}})
    raise ValueError(f"{event.type} is not an integration event")
