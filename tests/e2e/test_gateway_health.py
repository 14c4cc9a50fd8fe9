"""The gateway's liveness and readiness, served by the real app factory against real services."""

import socket

import pytest
from aiohttp.test_utils import TestClient, TestServer

from service.gateway.app import create_app
from tests.conftest import gateway_settings

PROBLEM_JSON = "application/problem+json"


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _client(database_url: str, nats_url: str) -> TestClient:
    settings = gateway_settings(database_url, nats_url)
    client = TestClient(TestServer(create_app(settings)))
    await client.start_server()
    return client


@pytest.fixture
async def client(database_url, servers):
    client = await _client(database_url, servers.nats_url)
    yield client
    await client.close()


@pytest.fixture
async def client_without_nats(database_url):
    client = await _client(database_url, f"nats://127.0.0.1:{_closed_port()}")
    yield client
    await client.close()


def _assert_problem(response, body: dict, status: int) -> None:
    assert response.status == status
    assert response.content_type == PROBLEM_JSON
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]


async def test_healthz_answers_200_json(client):
    response = await client.get("/healthz")
    assert response.status == 200
    assert response.content_type == "application/json"
    assert await response.json() == {"status": "ok"}


async def test_readyz_answers_200_when_postgres_and_nats_are_up(client):
    response = await client.get("/readyz")
    assert response.status == 200, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert body["checks"] == {"postgres": "ok", "nats": "ok"}
    assert body["status"] == "ready"


async def test_the_app_starts_without_nats_and_readyz_says_503(client_without_nats):
    # Liveness does not depend on NATS: the process is fine, only not ready.
    assert (await client_without_nats.get("/healthz")).status == 200

    response = await client_without_nats.get("/readyz")
    body = await response.json(content_type=None)
    _assert_problem(response, body, 503)
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["nats"] != "ok"
    assert "nats" not in body["checks"]["postgres"]


async def test_readyz_says_503_when_postgres_is_gone(client, servers, database_url):
    """The database disappears under a running gateway: readiness reports it, as a problem."""
    import asyncpg

    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(servers.database_url)
    try:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()
    response = await client.get("/readyz")
    body = await response.json(content_type=None)
    _assert_problem(response, body, 503)
    assert body["checks"]["postgres"] != "ok"
    assert body["checks"]["nats"] == "ok"


async def test_an_unknown_path_answers_404_problem_json(client):
    response = await client.get("/no/such/thing")
    body = await response.json(content_type=None)
    _assert_problem(response, body, 404)
    assert "Traceback" not in await response.text()


async def test_a_wrong_method_answers_405_problem_json(client):
    response = await client.post("/healthz")
    body = await response.json(content_type=None)
    _assert_problem(response, body, 405)
