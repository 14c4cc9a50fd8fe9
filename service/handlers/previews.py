"""Mapping previews: each evaluation runs in a child process of its own (see preview_child) that
the kernel limits in memory and CPU and that is killed past a wall-clock budget, so no expression
can stall the server, exhaust its memory, or read another preview's data. Few run at once; past
that, a preview is refused at once (PreviewsBusy) rather than queued. Evaluation errors are
results, not failures."""

import asyncio
import json
import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from service.domain.mappings import TIMEOUT_MS, compile_expression
from service.handlers import preview_child

# The expression's own budget stops most runaways; the wall budget (children start in tens of ms,
# more on a loaded machine) stops the rest: a regex inside `re`, a giant allocation.
WALL_TIMEOUT_SECONDS = TIMEOUT_MS / 1000 + 2
_ANSWER_LIMIT_BYTES = preview_child.MAX_RESULT_BYTES + 64 * 1024


@dataclass(frozen=True)
class PreviewOutcome:
    result: Any = None
    error: dict[str, Any] | None = None


class PreviewsBusy(Exception):
    """As many previews as allowed are running; the caller may retry shortly."""


def _failed(code: str, message: str) -> PreviewOutcome:
    return PreviewOutcome(error={"code": code, "message": message, "position": None})


class _ChildEvaluation:
    """One evaluation in one child process; `kill` may be called from the event loop at any time."""

    def __init__(self, context, expression: str, bindings: dict[str, Any]):
        self._receiver, sender = context.Pipe(duplex=False)
        self._process = context.Process(target=preview_child.run, args=(expression, bindings, sender), daemon=True)
        self._sender = sender
        self._reaped = False

    def run(self) -> PreviewOutcome:
        """Blocking: start the child, wait for its answer within the wall budget, reap it."""
        try:
            self._process.start()
        except OSError:  # no process to be had right now (fork limits): as busy, not as a database error
            self._sender.close()
            self._receiver.close()
            raise PreviewsBusy() from None
        try:
            self._sender.close()  # the child holds the write end now: EOF once it is gone
            if not self._receiver.poll(WALL_TIMEOUT_SECONDS):
                return _failed("D1012", "evaluation took too long")
            try:
                answer = json.loads(self._receiver.recv_bytes(_ANSWER_LIMIT_BYTES))
            except (EOFError, OSError):
                return self._stopped()
            if "error" in answer:
                return PreviewOutcome(error=answer["error"])
            return PreviewOutcome(result=answer["result"])
        finally:
            self.kill()
            self._process.join()
            self._reaped = True
            self._receiver.close()

    def _stopped(self) -> PreviewOutcome:
        """The child ended without an answer: killed by the kernel (CPU time), or worse."""
        self._process.join()
        if self._process.exitcode is not None and self._process.exitcode < 0:
            return _failed("D1012", "evaluation took too long or needed too much")
        return _failed("stopped", "the evaluation stopped without a result")

    def kill(self) -> None:
        # No exit-status poll here: only the waiting thread reaps, so the two never race on it.
        if self._process.pid is not None and not self._reaped:
            self._process.kill()


class PreviewRunner:
    """Runs previews in child processes from a fork server that has jsonata imported already."""

    def __init__(self, concurrency: int):
        self._context = multiprocessing.get_context("forkserver")
        # "__main__" too: the fork server imports the parent's main script (linkledger, pytest)
        # once, rather than each child running it again before it may evaluate.
        self._context.set_forkserver_preload(["__main__", preview_child.__name__])
        self._slots = asyncio.Semaphore(concurrency)
        # Threads only wait on pipes (the GIL is free meanwhile): one per running preview.
        self._waiters = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mapping-preview")

    async def start(self) -> None:
        """Start the fork server now, so the first preview does not pay for it."""
        from multiprocessing import forkserver

        await asyncio.get_running_loop().run_in_executor(self._waiters, forkserver.ensure_running)

    def close(self) -> None:
        # Waiting threads end within the wall budget, killing their children as they go.
        self._waiters.shutdown(wait=False, cancel_futures=True)

    async def preview(self, expression: str, bindings: dict[str, Any]) -> PreviewOutcome:
        """Compile (InvalidMapping when it does not) and evaluate `expression` against `bindings`;
        PreviewsBusy when as many previews as allowed are running."""
        compile_expression(expression)  # refused here, before any process is started
        if self._slots.locked():
            raise PreviewsBusy()
        async with self._slots:
            evaluation = _ChildEvaluation(self._context, expression, bindings)
            try:
                return await asyncio.get_running_loop().run_in_executor(self._waiters, evaluation.run)
            finally:
                evaluation.kill()  # a cancelled request stops its child now
