"""``service.engine``: the fresh seeds of requests that give none."""

from __future__ import annotations

import os

from service.engine import SEED_BITS, Engine


def test_fresh_seeds_are_63_bit_distinct_and_a_forked_child_draws_its_own() -> None:
    seeds = [Engine.fresh_seed() for _ in range(10_000)]
    assert all(0 <= s < 2**SEED_BITS for s in seeds)
    assert len(set(seeds)) == len(seeds)
    assert max(seeds) >= 2 ** (SEED_BITS - 4)  # the high bits are used too
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next seeds, to the parent
        os.close(read)
        os.write(write, ",".join(str(Engine.fresh_seed()) for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = [int(s) for s in os.read(read, 4096).decode().split(",")]
    os.close(read)
    os.waitpid(pid, 0)
    parent = [Engine.fresh_seed() for _ in range(4)]
    assert child != parent  # without the reseed at fork both would draw the same sequence
