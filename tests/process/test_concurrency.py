"""Many worker processes updating the same variables at once lose nothing."""

from __future__ import annotations

import multiprocessing as mp

import numpy as np

import varstore as vs
from tests.conftest import ServerProcess

WORKERS = 4
STEPS = 150


def _worker(address: str, steps: int) -> None:
    with vs.connect(address) as client:
        counter = client.get_variable("counter", [], dtype=vs.int64,
                                      initializer=vs.zeros_initializer)
        vec = client.get_variable("vec", [8], initializer=vs.zeros_initializer)
        rows = client.get_variable("rows", [4, 2], initializer=vs.zeros_initializer)
        for _ in range(steps):
            counter.assign_add(1)
            vec.assign_add(np.ones(8))
            rows.scatter_add([0, 0, 3], np.ones((3, 2)))


def test_workers_hammering_the_same_variables(server_process: ServerProcess) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(server_process.address, STEPS))
             for _ in range(WORKERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    with vs.connect(server_process.address) as client:
        counter, vec, rows = client.pull(
            [client.get_variable(n, s, dtype=d) for n, s, d in
             (("counter", [], vs.int64), ("vec", [8], vs.float32), ("rows", [4, 2], vs.float32))])
    total = WORKERS * STEPS
    assert int(counter) == total
    assert vec.tolist() == [total] * 8
    assert rows.tolist() == [[2 * total] * 2, [0, 0], [0, 0], [total] * 2]
