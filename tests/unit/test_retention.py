"""TensorFlow 1's Saver retention rule as the server keeps it (varstore.server.retention)."""

from __future__ import annotations

import pytest

from varstore.common.errors import InvalidArgumentError
from varstore.server.retention import Retention, Written


def _w(name: str, at: float) -> Written:
    return Written(name, f"/ck/{name}", at)


def _names(items: list[Written]) -> list[str]:
    return [w.named for w in items]


def test_each_saver_deletes_only_what_it_wrote() -> None:
    r = Retention()
    assert _names(r.record("gen", _w("gen-1", 1), 1)[1]) == []
    assert _names(r.record("disc", _w("disc-1", 2), 1)[1]) == []
    last, doomed = r.record("gen", _w("gen-2", 3), 1)
    assert (_names(last), _names(doomed)) == (["gen-2"], ["gen-1"])
    last, doomed = r.record("disc", _w("disc-2", 4), 1)
    assert (_names(last), _names(doomed)) == (["disc-2"], ["disc-1"])


def test_same_name_again_moves_to_the_end_and_zero_keeps_everything() -> None:
    r = Retention()
    r.record("s", _w("m-1", 1), 2)
    r.record("s", _w("m-2", 2), 2)
    last, doomed = r.record("s", _w("m-1", 3), 2)
    assert (_names(last), _names(doomed)) == (["m-2", "m-1"], [])
    for step in range(3):
        assert r.record("z", _w(f"z-{step}", step), 0) == ([], [])
    # An anonymous saver is new every time: it never deletes anything.
    assert _names(r.record(None, _w("a-1", 1), 1)[0]) == ["a-1"]
    assert r.record(None, _w("a-2", 2), 1)[1] == []


def test_keep_checkpoint_every_n_hours_keeps_one_per_period() -> None:
    r = Retention()
    r.record("s", _w("m-0", 0.0), 1, keep_every_hours=1.0)
    kept = []
    for i in range(1, 6):  # saves every 40 minutes
        _, doomed = r.record("s", _w(f"m-{i}", i * 2400.0), 1, keep_every_hours=1.0)
        kept.append(_names(doomed))
    # m-0 (t=0) and m-1 (t=40m) are not past the first hour; m-2 (t=80m) is, and is kept;
    # the next period ends at 120m: m-3 (120m) is not past it, m-4 (160m) is.
    assert kept == [["m-0"], ["m-1"], [], ["m-3"], []]


def test_forgotten_savers_delete_nothing() -> None:
    r = Retention(max_savers=2)
    r.record("a", _w("a-1", 1), 1)
    r.record("b", _w("b-1", 2), 1)
    r.record("c", _w("c-1", 3), 1)
    assert r.record("a", _w("a-2", 4), 1)[1] == []


@pytest.mark.parametrize("keep, hours", [(-1, 0.0), (1, -1.0), (1, float("nan")),
                                         (1, float("inf"))])
def test_bad_settings_are_invalid_argument(keep: int, hours: float) -> None:
    with pytest.raises(InvalidArgumentError):
        Retention().record("s", _w("m", 1), keep, hours)
