"""The service's NATS connection, which may not exist yet: linkledger starts, and appends go on,
while NATS is down; the link keeps trying and reconnects by itself once connected."""

import asyncio
import logging

import nats
import nats.aio.client

log = logging.getLogger("linkledger.nats")


class NatsLink:
    def __init__(self, url: str, *, name: str = "linkledger", retry_seconds: float = 1.0):
        self._url = url
        self._name = name
        self._retry_seconds = retry_seconds
        self._client: nats.aio.client.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def client(self) -> nats.aio.client.Client | None:
        return self._client

    @property
    def is_connected(self) -> bool:
        return self._client is not None and self._client.is_connected

    async def start(self, *, first_attempt_timeout: float = 3.0) -> None:
        self._task = asyncio.create_task(self._connect_until_done())
        try:
            await asyncio.wait_for(asyncio.shield(self._connected.wait()), first_attempt_timeout)
        except asyncio.TimeoutError:
            log.warning("NATS at %s is not reachable yet; starting without it and retrying", self._url)

    async def wait_connected(self) -> nats.aio.client.Client:
        await self._connected.wait()
        return self._client

    async def _connect_until_done(self) -> None:
        async def disconnected():
            log.warning("NATS disconnected; appends go on, publication catches up on reconnect")

        async def reconnected():
            log.info("NATS reconnected")

        async def error(exc):
            log.debug("NATS error: %s", type(exc).__name__)

        while True:
            try:
                self._client = await nats.connect(
                    self._url, name=self._name, allow_reconnect=True, max_reconnect_attempts=-1,
                    reconnect_time_wait=1, connect_timeout=2, disconnected_cb=disconnected,
                    reconnected_cb=reconnected, error_cb=error,
                )
                self._connected.set()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(self._retry_seconds)

    async def close(self) -> None:
        if self._task and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None and not self._client.is_closed:
            if self._client.is_connected:
                await self._client.drain()
            else:
                await self._client.close()
