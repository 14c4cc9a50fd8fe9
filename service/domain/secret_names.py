"""Which keys name a secret, for the documents kept in clear (account context, overrides).

Names are compared normalised (lower case, without `-` and `_`), and a name containing any of the
words below names a secret: `X-Api-Key`, `clientSecret`, `oauth_token`, `private_key` alike."""

SECRET_WORDS = ("secret", "token", "password", "passwd", "authorization", "privatekey", "apikey", "credential")
# Names with such a word that hold none: where and how a token is obtained, not the token.
NOT_SECRETS = frozenset({"tokenurl", "tokentype", "tokenendpoint", "authorizationurl", "authorizationendpoint"})


def normalized(key: str) -> str:
    return key.lower().replace("-", "").replace("_", "")


def names_a_secret(key: str) -> bool:
    name = normalized(key)
    return name not in NOT_SECRETS and any(word in name for word in SECRET_WORDS)
