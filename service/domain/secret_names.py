"""Which keys name a secret, for the documents kept in clear (account context, overrides).

Names are compared normalised (lower case, without `-` and `_`), and a name containing any of the
words below names a secret: `X-Api-Key`, `clientSecret`, `oauth_token`, `private_key` alike."""

import functools
from typing import Any

SECRET_WORDS = ("secret", "token", "password", "passwd", "authorization", "privatekey", "apikey", "credential")
# Names with such a word that hold none: where and how a token is obtained, not the token.
NOT_SECRETS = frozenset({"tokenurl", "tokentype", "tokenendpoint", "authorizationurl", "authorizationendpoint"})


def normalized(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


@functools.lru_cache(maxsize=4096)  # the same few context keys come with every account of an import
def names_a_secret(key: str) -> bool:
    name = normalized(key)
    return name not in NOT_SECRETS and any(word in name for word in SECRET_WORDS)


def secret_field(value: Any, path: str) -> str | None:
    """The path of the first secret-named field of `value` holding something, or None."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            if names_a_secret(key) and item not in (None, ""):
                return here
            if (found := secret_field(item, here)) is not None:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            if (found := secret_field(item, f"{path}[{index}]")) is not None:
                return found
    return None
