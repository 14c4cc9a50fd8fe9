"""Import workers: processes that prepare the new accounts of large bulk imports.

Preparing a new account (deciding, folding, a data key wrapped under the keyring, the tokens
encrypted, fingerprinted, every event encoded and hashed) is CPU-bound Python, several times the
work PostgreSQL does to store it, so one process caps a bulk import at one core. The serving process
hands chunks of new accounts to a few workers and writes what they return; the workers hold the
keyring and the audit key but no connection, and write nothing themselves.

Each worker is joined to the serving process by a socket pair that the event loop reads itself:
a request is a length-prefixed pickle of (operation, arguments), answered in order. There are no
executor threads in the serving process (`concurrent.futures`' process pool ran a feeder and a
result thread there; throughput measured the same either way), and a worker's death is seen at
once, as the end of its socket.
"""

import asyncio
import collections
import importlib
import logging
import multiprocessing
import pickle
import socket
from dataclasses import replace
from datetime import datetime
from typing import Any

from service.crypto.datakeys import DataKeys
from service.crypto.fingerprint import Fingerprinter
from service.crypto.keyring import Keyring
from service.domain.commands import ImportAccount
from service.domain.identity import account_id_for, account_stream
from service.domain.integration import IntegrationState
from service.handlers.uow import UnitOfWork
from service.runtime import tune_collector

log = logging.getLogger("linkledger.import")

_HEADER = 4  # a frame's length, big-endian


class WorkerUnavailable(Exception):
    """No worker could do it (none ready, or the one asked died): do it in this process."""


# --- in a worker process ---------------------------------------------------------------------

_worker_uow: UnitOfWork | None = None  # its keyring and audit key, no pool


def _acting(actor: str, correlation_id, now: datetime) -> UnitOfWork:
    return replace(_worker_uow, clock=lambda: now, actor=actor, correlation_id=correlation_id)


def _prepare(records: list[tuple[int, ImportAccount]], integrations, now: datetime, actor: str, correlation_id):
    """A bulk import's chunk: service.handlers.accounts.prepare_new_accounts."""
    from service.handlers.accounts import prepare_new_accounts

    job = []
    for line, cmd in records:
        account_id = account_id_for(cmd)  # made again here: quicker than pickling ids
        job.append((line, cmd, account_id, account_stream(account_id)))
    return prepare_new_accounts(_acting(actor, correlation_id, now), job, integrations, now)


_OPERATIONS = {"prepare": _prepare}


def _serve(sock: socket.socket, keyring: Keyring, fingerprinter: Fingerprinter) -> None:
    """A worker's whole life: answer requests in order until the serving process closes its end."""
    global _worker_uow
    importlib.import_module("service.handlers.accounts")  # what a worker runs, imported before tuning
    _worker_uow = UnitOfWork(pool=None, store=None, data_keys=DataKeys(None, keyring), fingerprinter=fingerprinter)
    tune_collector()
    incoming = sock.makefile("rb")

    def answer(ok: bool, value: Any) -> None:
        try:
            frame = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:  # an error that does not pickle: its kind and message
            frame = pickle.dumps((False, RuntimeError(f"{type(value).__name__}: {value} ({error})")))
        sock.sendall(len(frame).to_bytes(_HEADER, "big") + frame)

    answer(True, None)  # ready
    while header := incoming.read(_HEADER):
        operation, args = pickle.loads(incoming.read(int.from_bytes(header, "big")))
        try:
            result = _OPERATIONS[operation](*args)
        except Exception as error:
            answer(False, error)
        else:
            answer(True, result)


# --- in the serving process ------------------------------------------------------------------

class _Worker:
    """One worker process and the serving process's end of its socket."""

    def __init__(self, process: multiprocessing.Process, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.process, self.reader, self.writer = process, reader, writer
        self.waiting: collections.deque[asyncio.Future] = collections.deque()
        self.ready = False
        self.reading: asyncio.Task | None = None

    async def read(self) -> None:
        """Hand each answer to its request, in order; when the worker dies, every request it held
        fails with WorkerUnavailable."""
        try:
            while True:
                header = await self.reader.readexactly(_HEADER)
                ok, value = pickle.loads(await self.reader.readexactly(int.from_bytes(header, "big")))
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(value) if ok else waiter.set_exception(value)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.ready = False
            while self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_exception(WorkerUnavailable("an import worker died"))

    def call(self, operation: str, args: tuple) -> asyncio.Future:
        frame = pickle.dumps((operation, args), protocol=pickle.HIGHEST_PROTOCOL)
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        self.writer.write(len(frame).to_bytes(_HEADER, "big") + frame)
        return waiter


class ImportWorkers:
    """`processes` import workers, started with `start` and stopped with `close`. A worker that
    dies (killed, out of memory) costs no import: what it held is prepared in the serving process,
    and a new worker takes its place."""

    def __init__(self, keyring: Keyring, fingerprinter: Fingerprinter, processes: int):
        self._keyring, self._fingerprinter, self._processes = keyring, fingerprinter, processes
        self._workers: list[_Worker] = []
        self._replacing: set[asyncio.Task] = set()
        self._closed = False

    @property
    def pids(self) -> list[int]:
        return [worker.process.pid for worker in self._workers]

    async def start(self) -> None:
        """Start every worker now (importing the service takes a while) rather than on first use."""
        self._workers = list(await asyncio.gather(*(self._spawn() for _ in range(self._processes))))

    async def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        # forkserver: workers start from a clean process, not a copy of a running event loop.
        process = multiprocessing.get_context("forkserver").Process(
            target=_serve, args=(theirs, self._keyring, self._fingerprinter), daemon=True, name="linkledger-import")
        process.start()
        theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = _Worker(process, reader, writer)
        ready = asyncio.get_running_loop().create_future()
        worker.waiting.append(ready)
        worker.reading = asyncio.create_task(worker.read())
        worker.reading.add_done_callback(lambda _: self._died(worker))
        try:
            await ready
        except BaseException:  # it died starting, or we were cancelled: leave nothing behind
            await self._stop(worker)
            raise
        worker.ready = True
        return worker

    def _died(self, worker: _Worker) -> None:
        if self._closed or worker not in self._workers:
            return
        log.warning("an import worker died; what it held is prepared in this process, a new worker takes its place")
        worker.writer.close()
        worker.process.join(0)
        index = self._workers.index(worker)
        replacing = asyncio.create_task(self._replace(index, worker))
        self._replacing.add(replacing)
        replacing.add_done_callback(self._replacing.discard)

    async def _replace(self, index: int, dead: _Worker) -> None:
        try:
            fresh = await self._spawn()
        except Exception:
            log.exception("an import worker could not be started")
            return
        if self._closed or self._workers[index] is not dead:
            await self._stop(fresh)
            return
        self._workers[index] = fresh

    async def _call(self, operation: str, *args) -> Any:
        ready = [worker for worker in self._workers if worker.ready]
        if not ready:
            raise WorkerUnavailable("no import worker is ready")
        worker = min(ready, key=lambda w: len(w.waiting))  # the least busy
        return await worker.call(operation, args)

    async def prepare(
        self, uow: UnitOfWork, job: list[tuple[int, ImportAccount, object, str]],
        integrations: dict[tuple[str, str], IntegrationState], now: datetime,
    ):
        """prepare_new_accounts(job) in a worker, acting as `uow` does."""
        from service.handlers.accounts import prepare_new_accounts

        try:
            return await self._call("prepare", [(line, cmd) for line, cmd, _, _ in job], integrations, now,
                                    uow.actor, uow.correlation_id)
        except WorkerUnavailable:
            return prepare_new_accounts(uow, job, integrations, now)

    async def close(self) -> None:
        self._closed = True
        for replacing in list(self._replacing):
            replacing.cancel()
        await asyncio.gather(*(self._stop(worker) for worker in self._workers))
        self._workers = []

    @staticmethod
    async def _stop(worker: _Worker) -> None:
        """Closing its socket ends a worker's loop; one that does not stop soon is killed."""
        worker.writer.close()
        if worker.reading is not None:
            await asyncio.gather(worker.reading, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, worker.process.join, 5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
