"""Domain errors: a command the account or integration rules refuse.

Each names the offending input (`field`, a dotted path such as "credentials.refresh_token") so the
gateway can answer with a precise problem. Messages never contain secret values.
"""


class DomainError(Exception):
    """A command refused by a domain rule."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class UnknownIntegration(DomainError):
    """The integration is not configured in this environment."""


class UnknownAccount(DomainError):
    """The command names an account that does not exist."""


class MethodNotAllowed(DomainError):
    """The authentication method is not enabled for the integration."""


class AccountIsDeleted(DomainError):
    """The account was deleted; deletion is terminal."""


class IdentityMismatch(DomainError):
    """The record names an existing account (same identity) that belongs to another
    integration, tenant or authentication method."""


class MissingCredentials(DomainError):
    """A credential the authentication method needs is missing."""


class InvalidContext(DomainError):
    """Account context that cannot be stored: a secret outside the credentials, or a value
    canonical JSON cannot hold exactly (a float)."""


class InvalidConfiguration(DomainError):
    """An integration definition the domain refuses."""
