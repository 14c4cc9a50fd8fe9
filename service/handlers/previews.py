"""Mapping previews: evaluate an expression against a sample, off the event loop and within a
budget, so a pathological expression costs one worker thread for at most its time budget and
never the server. Evaluation errors are results, not failures."""

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jsonata import JException

from service.domain.mappings import TIMEOUT_MS, compile_expression, evaluate

# Few threads: previews are an operator's tool, and a runaway expression holds its thread until
# its time budget is spent.
_EVALUATORS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="mapping-preview")
MAX_RESULT_BYTES = 1024 * 1024


@dataclass(frozen=True)
class PreviewOutcome:
    result: Any = None
    error: dict[str, Any] | None = None


def _run(expression: str, bindings: dict[str, Any]) -> PreviewOutcome:
    compiled = compile_expression(expression)
    try:
        result = evaluate(compiled, bindings)
    except JException as error:
        location = getattr(error, "location", None)
        return PreviewOutcome(error={"code": getattr(error, "error", None), "message": str(error),
                                     "position": location if isinstance(location, int) and location >= 0 else None})
    except (RecursionError, MemoryError, ValueError, TypeError, ArithmeticError) as error:
        return PreviewOutcome(error={"code": type(error).__name__, "message": str(error)[:500], "position": None})
    try:
        size = len(json.dumps(result, allow_nan=False))
    except (TypeError, ValueError):
        return PreviewOutcome(error={"code": "not-json", "message": "the result is not a JSON value (a function?)",
                                     "position": None})
    if size > MAX_RESULT_BYTES:
        return PreviewOutcome(error={"code": "too-large", "message": f"the result is larger than {MAX_RESULT_BYTES} bytes",
                                     "position": None})
    return PreviewOutcome(result=result)


async def preview(expression: str, bindings: dict[str, Any]) -> PreviewOutcome:
    """Compile (InvalidMapping when it does not) and evaluate `expression` against `bindings`."""
    compile_expression(expression)  # refused here, before any thread is used
    future = asyncio.get_running_loop().run_in_executor(_EVALUATORS, _run, expression, bindings)
    try:
        # The expression's own budget stops it; this guards against one that never yields to it
        # (or a queue of them): the caller gets an answer, the thread finishes when it can.
        return await asyncio.wait_for(asyncio.shield(future), timeout=TIMEOUT_MS / 1000 + 2)
    except asyncio.TimeoutError:
        return PreviewOutcome(error={"code": "D1012", "message": "evaluation took too long", "position": None})
