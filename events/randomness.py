"""Random bytes from the kernel's CSPRNG, fetched a page at a time.

Creating an account takes seven small random values (event ids, a key id, a data key, two
nonces); a getrandom() call for each costs more than the rest of making it. The page is dropped
in a forked child, so a parent and its child never hand out the same bytes.
"""

import os
import threading

_PAGE = 4096


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self._page = b""
        self._used = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._used + count > len(self._page):
                self._page = os.urandom(max(_PAGE, count))
                self._used = 0
            start = self._used
            self._used += count
            return self._page[start:self._used]


_POOL = _Pool()
os.register_at_fork(after_in_child=_POOL.reset)


def random_bytes(count: int) -> bytes:
    """`count` bytes from the operating system's CSPRNG (as os.urandom), each handed out once."""
    return _POOL.take(count)
