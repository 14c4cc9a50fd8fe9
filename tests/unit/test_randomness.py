"""Buffered CSPRNG bytes: never handed out twice, not even across a fork."""

import os

from events.randomness import random_bytes


def test_values_are_never_repeated_and_span_pages():
    seen = [random_bytes(12) for _ in range(2000)]  # more than one page's worth
    assert len(set(seen)) == len(seen)
    assert all(len(value) == 12 for value in seen)
    assert len(random_bytes(10_000)) == 10_000


def test_a_forked_child_does_not_hand_out_its_parents_bytes():
    random_bytes(1)  # the parent holds a partly used page
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, random_bytes(32))
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    childs = os.read(read, 32)
    os.close(read)
    assert childs != random_bytes(32)
