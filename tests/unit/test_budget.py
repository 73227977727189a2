"""The memory budget's arithmetic: charges, refusals, leases given back exactly once."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from varstore.common import dtypes
from varstore.common.errors import ResourceExhaustedError
from varstore.server.budget import MemoryBudget, array_bytes, reply_bytes


def test_charges_past_the_limit_are_refused_and_count_nothing() -> None:
    budget = MemoryBudget(limit=100)
    budget.charge(60, "first")
    with pytest.raises(ResourceExhaustedError, match=r"^second \(41 bytes\) would exceed the "
                       r"server's memory limit of 100 bytes \(60 in use\)$"):
        budget.charge(41, "second")
    assert budget.used == 60
    budget.charge(40, "third")
    budget.release(100)
    assert budget.used == 0


def test_request_bytes_have_their_own_limit() -> None:
    budget = MemoryBudget(limit=0, request_limit=10)
    lease = budget.lease()
    lease.charge_request(8, "a request")
    with pytest.raises(ResourceExhaustedError, match=r"^another \(3 bytes\) would take the "
                       r"requests in flight past the server's limit of 10 bytes \(8 in flight\)"):
        budget.lease().charge_request(3, "another")
    lease.charge(1 << 40, "memory is unlimited")
    lease.close()
    assert (budget.used, budget.requests) == (0, 0)


def test_a_lease_gives_back_once_and_refuses_after() -> None:
    budget = MemoryBudget(limit=1000)
    lease = budget.lease()
    lease.charge_array((10, 5), dtypes.float64, "x")
    assert (lease.held, budget.used) == (400, 400)
    lease.close()
    lease.close()
    assert budget.used == 0
    with pytest.raises(ResourceExhaustedError, match="the call has ended"):
        lease.charge(1, "late")
    assert budget.used == 0


def test_leases_on_many_threads_add_up_to_nothing() -> None:
    budget = MemoryBudget(limit=1 << 20)

    def work() -> None:
        for _ in range(500):
            lease = budget.lease()
            try:
                lease.charge(1000, "a", request=True)
                lease.charge(3000, "b")
            except ResourceExhaustedError:
                pass
            lease.close()
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (budget.used, budget.requests) == (0, 0)


@pytest.mark.parametrize("shape, dtype, expected", [
    ((1 << 40, 1 << 40), dtypes.complex128, 16 << 80),
    ((3, 0, 1 << 62), dtypes.float32, 0),
    ((7,), dtypes.string, 7 * 56),
    ((), dtypes.bool_, 1),
])
def test_array_bytes_are_exact(shape: tuple[int, ...], dtype: dtypes.DType,
                               expected: int) -> None:
    assert array_bytes(shape, dtype) == expected


def test_reply_bytes_count_what_encoding_copies() -> None:
    numbers = np.zeros(10, np.float32)
    words = np.array([b"ab", b"cde"], dtype=object)
    assert reply_bytes([numbers, None, words], streamed=True) == 2 * (16 + 5)
    assert reply_bytes([numbers, words], streamed=False) == 80 + 2 * (16 + 5)
