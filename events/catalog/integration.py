"""Integration events: stream `integration-<env>-<name>`."""

from typing import ClassVar, Literal

from events.catalog.base import Event, Fingerprint, JsonObject

AuthenticationMethod = Literal["oauth2", "api_key", "basic"]


class IntegrationEvent(Event):
    family: ClassVar[str] = "integration"


class IntegrationConfigured(IntegrationEvent):
    """An integration's definition was created or changed (the whole definition, not a diff)."""

    type: ClassVar[str] = "IntegrationConfigured"

    environment: str
    name: str
    display_name: str
    authentication_methods: tuple[AuthenticationMethod, ...]
    health_check: dict[str, str] | None = None
    config: JsonObject = {}


class OAuthClientConfigured(IntegrationEvent):
    """A bring-your-own OAuth client was set. The client secret is encrypted in the event's secret
    column; the payload carries only its fingerprint."""

    type: ClassVar[str] = "OAuthClientConfigured"

    environment: str
    integration: str
    client_id: str
    client_secret_fingerprint: Fingerprint
    authorize_url: str | None = None
    token_url: str
    revocation_url: str | None = None
    userinfo_url: str | None = None
    client_authentication: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    scopes: tuple[str, ...] = ()


class IntegrationFlagged(IntegrationEvent):
    """The OAuth app itself is broken (e.g. invalid_client): flag the integration once instead of
    failing every account on it."""

    type: ClassVar[str] = "IntegrationFlagged"

    environment: str
    integration: str
    reason: str  # "invalid_client", "unauthorized_client", ...
    detail: str | None = None
