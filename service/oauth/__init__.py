"""The OAuth client: refresh, code exchange, revocation, userinfo health check, failure classes."""

from service.oauth.client import (
    ClientAuthentication,
    OAuthClient,
    OAuthClientConfig,
    TokenSet,
    TokenTypeHint,
    classify_failure,
    parse_retry_after,
)
from service.oauth.errors import FailureClass, OAuthError

__all__ = [
    "ClientAuthentication",
    "FailureClass",
    "OAuthClient",
    "OAuthClientConfig",
    "OAuthError",
    "TokenSet",
    "TokenTypeHint",
    "classify_failure",
    "parse_retry_after",
]
