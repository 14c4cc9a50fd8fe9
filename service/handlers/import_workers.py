"""Import workers: processes that prepare the new accounts of large bulk imports.

Preparing a new account (deciding, folding, a data key wrapped under the keyring, the tokens
encrypted, fingerprinted, every event encoded and hashed) is CPU-bound Python, several times the
work PostgreSQL does to store it, so one process caps a bulk import at one core. The serving
process hands chunks of new accounts to a few workers and writes what they return; the workers
hold the keyring and the audit key but no connection, and write nothing themselves.
"""

import asyncio
import importlib
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from datetime import datetime

from service.crypto.datakeys import DataKeys
from service.crypto.fingerprint import Fingerprinter
from service.crypto.keyring import Keyring
from service.domain.commands import ImportAccount
from service.domain.identity import account_id_for, account_stream
from service.domain.integration import IntegrationState
from service.handlers.uow import UnitOfWork
from service.runtime import tune_collector

log = logging.getLogger("linkledger.import")

_worker_uow: UnitOfWork | None = None  # in a worker process: its keyring and audit key, no pool


def _start_worker(keyring: Keyring, fingerprinter: Fingerprinter) -> None:
    global _worker_uow
    importlib.import_module("service.handlers.accounts")  # what a worker runs, imported before tuning

    _worker_uow = UnitOfWork(pool=None, store=None, data_keys=DataKeys(None, keyring), fingerprinter=fingerprinter)
    tune_collector()


def _ready() -> bool:
    return _worker_uow is not None


def _prepare(records: list[tuple[int, ImportAccount]], integrations, now: datetime, actor: str, correlation_id):
    from service.handlers.accounts import prepare_new_accounts

    uow = replace(_worker_uow, clock=lambda: now, actor=actor, correlation_id=correlation_id)
    job = []
    for line, cmd in records:
        account_id = account_id_for(cmd)
        job.append((line, cmd, account_id, account_stream(account_id)))
    return prepare_new_accounts(uow, job, integrations, now)


class ImportWorkers:
    """A pool of `processes` import workers, started with `start` and stopped with `close`. A
    worker that dies (killed, out of memory) costs no import: the chunks it held are prepared in
    the serving process, and a fresh pool takes the next ones."""

    def __init__(self, keyring: Keyring, fingerprinter: Fingerprinter, processes: int):
        self._keyring, self._fingerprinter, self._processes = keyring, fingerprinter, processes
        self._executor = self._new_executor()

    def _new_executor(self) -> ProcessPoolExecutor:
        # forkserver: workers start from a clean process, not a copy of a running event loop.
        return ProcessPoolExecutor(
            self._processes, mp_context=multiprocessing.get_context("forkserver"),
            initializer=_start_worker, initargs=(self._keyring, self._fingerprinter),
        )

    async def start(self) -> None:
        """Start every worker now (importing the service takes a while) rather than on first use."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self._executor, _ready) for _ in range(self._processes * 2)))

    async def prepare(
        self, uow: UnitOfWork, job: list[tuple[int, ImportAccount, object, str]],
        integrations: dict[tuple[str, str], IntegrationState], now: datetime,
    ) -> list:
        """prepare_new_accounts(job) in a worker, acting as `uow` does."""
        from service.handlers.accounts import prepare_new_accounts

        executor = self._executor
        try:
            # Each account's id and stream are made again there: quicker than pickling them.
            return await asyncio.get_running_loop().run_in_executor(
                executor, _prepare, [(line, cmd) for line, cmd, _, _ in job], integrations, now, uow.actor,
                uow.correlation_id)
        except BrokenProcessPool:
            log.warning("an import worker died; its chunk is prepared in this process, a new pool takes the next")
            if self._executor is executor:
                self._executor = self._new_executor()
                executor.shutdown(wait=False, cancel_futures=True)
            return prepare_new_accounts(uow, job, integrations, now)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
