"""The time the domain sees. Real time in production; tests and benchmarks may run it faster, so
that tokens expire in seconds of wall time. Every process given the same epoch and rate agrees on
the time (and so does the provider simulator, given the same function)."""

import time
from datetime import datetime, timezone
from typing import Callable


def accelerated_clock(epoch: float, rate: float) -> Callable[[], datetime]:
    """Time equal to real time at `epoch` (Unix seconds), then running `rate` times as fast."""
    def now() -> datetime:
        real = time.time()
        return datetime.fromtimestamp(epoch + (real - epoch) * rate, timezone.utc)
    return now


def clock_from_settings(settings) -> Callable[[], datetime]:
    from service.handlers.uow import system_clock

    if settings.clock_rate == 1.0:
        return system_clock
    return accelerated_clock(settings.clock_epoch or time.time(), settings.clock_rate)
