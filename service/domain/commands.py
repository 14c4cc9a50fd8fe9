"""Commands: what a caller asks the account domain to do. Imperative nouns, validated by pydantic.

Secret material travels only inside `Credentials`, as SecretStr, so it never shows in a repr, a
log line or a validation error.
"""

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from events.catalog.base import assembled

AuthenticationMethod = Literal["oauth2", "api_key", "basic"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"  # environments and integrations: safe in NATS subjects


class Command(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Credentials(Command):
    """The secret part of an account. oauth2 needs access_token (refresh_token strongly expected);
    api_key needs api_key; basic needs username+password."""

    access_token: SecretStr | None = None
    refresh_token: SecretStr | None = None
    api_key: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    # Any further secret fields a provider needs (e.g. token_secret), kept encrypted as well.
    extra: dict[str, SecretStr] = Field(default_factory=dict)

    def plaintext(self) -> dict[str, Any]:
        """The secrets as a plain dict, for encryption only."""
        out: dict[str, Any] = {}
        for name in ("access_token", "refresh_token", "api_key", "password"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.get_secret_value()
        if self.username is not None:
            out["username"] = self.username
        if self.extra:
            out["extra"] = {k: v.get_secret_value() for k, v in sorted(self.extra.items())}
        return out


class ImportAccount(Command):
    """Bring an existing account (tokens from a vendor export, or a fresh connection) into custody."""

    environment: str = Field(pattern=NAME_PATTERN)
    integration: str = Field(pattern=NAME_PATTERN)
    tenant_id: str = Field(min_length=1, max_length=200)
    authentication_method: AuthenticationMethod = "oauth2"
    # The account's identity in the system it came from; with the environment it names the
    # account, so importing the same reference again never makes a second account.
    external_ref: str | None = Field(default=None, min_length=1, max_length=500)
    credentials: Credentials
    token_type: str | None = None
    expires_at: datetime | None = None  # aware, UTC; from expires_at or expires_in
    scopes: tuple[str, ...] = ()
    context: dict[str, Any] = Field(default_factory=dict)  # non-secret: instance_url, portal id, ...
    source: str = "api"  # "api", "import:canonical", "import:truto", "import:nango"

    def __reduce__(self):
        # Commands cross to import workers by the thousand: pickled as their field values (the
        # secrets as plain strings inside the pickle), rebuilt there without validating again.
        credentials = self.credentials
        secrets = tuple(None if value is None else value.get_secret_value() for value in (
            credentials.access_token, credentials.refresh_token, credentials.api_key, credentials.password))
        extra = {name: value.get_secret_value() for name, value in credentials.extra.items()}
        return _rebuild_import_account, (
            self.environment, self.integration, self.tenant_id, self.authentication_method, self.external_ref,
            secrets, credentials.username, extra, self.token_type, self.expires_at, self.scopes, self.context,
            self.source,
        )


def _secret(value: str | None) -> SecretStr | None:
    return None if value is None else SecretStr(value)


def _rebuild_import_account(
    environment, integration, tenant_id, authentication_method, external_ref, secrets, username, extra, token_type,
    expires_at, scopes, context, source,
) -> ImportAccount:
    """An ImportAccount from the values of a validated one (ImportAccount.__reduce__)."""
    access_token, refresh_token, api_key, password = secrets
    # Rebuilt without validating again (assembled): a worker rebuilds thousands of commands.
    credentials = assembled(Credentials, {
        "access_token": _secret(access_token), "refresh_token": _secret(refresh_token), "api_key": _secret(api_key),
        "username": username, "password": _secret(password),
        "extra": {name: SecretStr(value) for name, value in extra.items()},
    })
    return assembled(ImportAccount, {
        "environment": environment, "integration": integration, "tenant_id": tenant_id,
        "authentication_method": authentication_method, "external_ref": external_ref, "credentials": credentials,
        "token_type": token_type, "expires_at": expires_at, "scopes": scopes, "context": context, "source": source,
    })


class ConfigureIntegration(Command):
    environment: str = Field(pattern=NAME_PATTERN)
    name: str = Field(pattern=NAME_PATTERN)
    display_name: str | None = None
    authentication_methods: tuple[AuthenticationMethod, ...] = ("oauth2",)
    # A lightweight call that proves a token works, e.g. {"method": "GET", "url": "https://.../userinfo"}.
    health_check: dict[str, str] | None = None
    # Integration base mapping configuration (JSONata strings etc.), see the overrides issue.
    config: dict[str, Any] = Field(default_factory=dict)


class ConfigureOAuthClient(Command):
    """A bring-your-own OAuth client for an integration."""

    environment: str = Field(pattern=NAME_PATTERN)
    integration: str = Field(pattern=NAME_PATTERN)
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    authorize_url: str | None = None
    token_url: str
    revocation_url: str | None = None
    userinfo_url: str | None = None
    client_authentication: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    scopes: tuple[str, ...] = ()


class RecordValidation(Command):
    """The outcome of a health check or post-install step."""

    account_id: UUID
    ok: bool
    stage: Literal["validation", "post_install"] = "validation"
    reason: str | None = None


class RecordTokenRefresh(Command):
    """A refresh succeeded: new tokens (the refresh token only when the provider rotated it)."""

    account_id: UUID
    credentials: Credentials
    expires_at: datetime | None = None
    scopes: tuple[str, ...] | None = None


class RecordRefreshFailure(Command):
    account_id: UUID
    failure_class: Literal["invalid_grant", "invalid_client", "transient", "network"]
    http_status: int | None = None
    provider_error: str | None = None
    attempt: int = 1
    retry_at: datetime | None = None


class ExportTokens(Command):
    account_id: UUID
    purpose: str = Field(min_length=1, max_length=500)


class DeleteAccount(Command):
    account_id: UUID
    reason: str | None = None


class RecordCredentialsAccess(Command):
    account_id: UUID
    accessor: str  # the api key id that read the token
    count: int = Field(ge=1)
    first_at: datetime
    last_at: datetime
