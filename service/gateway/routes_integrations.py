"""PUT an integration definition with its bring-your-own OAuth client."""

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from service.domain.commands import AuthenticationMethod, ConfigureIntegration, ConfigureOAuthClient
from service.domain.mappings import validate_mappings
from service.domain.overrides import UNIFIED_MODEL
from service.gateway.auth import api_key, ensure_environment, requires
from service.gateway.keys import UOW
from service.gateway.requests import parse_json
from service.gateway.views import integration_view
from service.handlers.integrations import configure_integration, configure_oauth_client

routes = web.RouteTableDef()


class OAuthClientBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    client_id: str = Field(min_length=1)
    client_secret: SecretStr
    authorize_url: str | None = None
    token_url: str
    revocation_url: str | None = None
    userinfo_url: str | None = None
    client_authentication: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    scopes: list[str] = []


class IntegrationBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    display_name: str | None = None
    authentication_methods: list[AuthenticationMethod] = ["oauth2"]
    health_check: dict[str, str] | None = None
    config: dict[str, Any] = {}
    # The base mappings, model -> resource -> method -> {response_mapping, resource, before, ...};
    # kept as config.unified_model, below environment and account overrides.
    unified_model: dict[str, Any] | None = None
    oauth_client: OAuthClientBody | None = None


@routes.put("/v1/environments/{env}/integrations/{name}")
@requires("admin")
async def put_integration(request: web.Request) -> web.Response:
    env, name = request.match_info["env"], request.match_info["name"]
    ensure_environment(request, env)
    body = await parse_json(request, IntegrationBody)
    validate_mappings({"config": body.config, UNIFIED_MODEL: body.unified_model})  # paths as written
    config = body.config if body.unified_model is None else {**body.config, UNIFIED_MODEL: body.unified_model}
    uow = request.app[UOW].acting_as(api_key(request).actor)
    state = await configure_integration(ConfigureIntegration(
        environment=env, name=name, display_name=body.display_name,
        authentication_methods=tuple(body.authentication_methods), health_check=body.health_check, config=config,
    ), uow)
    if body.oauth_client is not None:
        client = body.oauth_client
        state = await configure_oauth_client(ConfigureOAuthClient(
            environment=env, integration=name, client_id=client.client_id, client_secret=client.client_secret,
            authorize_url=client.authorize_url, token_url=client.token_url, revocation_url=client.revocation_url,
            userinfo_url=client.userinfo_url, client_authentication=client.client_authentication,
            scopes=tuple(client.scopes),
        ), uow)
    return web.json_response(integration_view(state))
