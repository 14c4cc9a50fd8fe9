"""Process-wide settings of a linkledger process (the CLI, `serve`, the import workers)."""

import contextlib
import gc
from typing import Iterator

# Imports allocate a great many objects that live a while (parsed records, commands, prepared
# rows), and with the collector's default, a pass every 700 allocations, a bulk import spent
# about a fifth of its serving process's time in collections. A pass every 10,000 allocations,
# with the objects made at start-up (modules, their constants) frozen out of every pass, costs a
# little memory and saves most of that time.
COLLECTOR_THRESHOLDS = (10_000, 10, 10)


def tune_collector() -> None:
    """Call once the process has imported what it runs."""
    gc.freeze()
    gc.set_threshold(*COLLECTOR_THRESHOLDS)


_pauses = 0
_was_enabled = True


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while a bulk import runs (nested and concurrent pauses are counted).

    A bulk import holds tens of thousands of young objects at once (parsed records, commands,
    results), and each pass of the collector walks them: a fifth of the serving process's time in
    a 10,000-account import, even at the thresholds above. Reference counting still frees all
    that is not cyclic; the collector runs again as usual once the last import ends."""
    global _pauses, _was_enabled
    if _pauses == 0:
        _was_enabled = gc.isenabled()
        gc.disable()
    _pauses += 1
    try:
        yield
    finally:
        _pauses -= 1
        if _pauses == 0 and _was_enabled:
            gc.enable()
