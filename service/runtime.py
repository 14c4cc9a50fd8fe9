"""Process-wide settings of a linkledger process (the CLI, `serve`, the import workers)."""

import gc

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
