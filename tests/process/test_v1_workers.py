"""Many worker processes run the same ``varstore.v1`` program against one server."""

from __future__ import annotations

import multiprocessing
import time

import varstore.v1 as tf
from tests.conftest import ServerProcess

WORKERS = 4
RUNS = 50


def worker(address: str, chief: bool, runs: int) -> None:
    """Between-graph replication as in TF: every worker builds the same graph; the chief
    initializes, the others wait until ``report_uninitialized_variables`` is empty."""
    counter = tf.Variable(0, name="counter")
    increment = tf.assign(counter, counter + 1)
    init_op = tf.global_variables_initializer()
    not_ready = tf.report_uninitialized_variables()
    with tf.Session(address) as sess:
        if chief:
            sess.run(init_op)
        deadline = time.monotonic() + 60
        while len(sess.run(not_ready)):
            assert time.monotonic() < deadline, "the chief never initialized the variables"
            time.sleep(0.01)
        for _ in range(runs):
            sess.run(increment)


def test_concurrent_increments_from_many_processes_count_exactly(
        server_process: ServerProcess) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(server_process.address, i == 0, RUNS))
             for i in range(WORKERS)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=120)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * WORKERS
    with tf.Graph().as_default():
        counter = tf.Variable(0, name="counter")
        with tf.Session(server_process.address) as sess:
            assert sess.run(counter) == WORKERS * RUNS
            assert sess.run(tf.report_uninitialized_variables()).tolist() == []
