"""The TensorFlow plugin's mirrored variables (``varstore.tensorflow.exchange.Mirror``, numpy
only): a step's changes reach the server as ``assign_add`` in the step's request and add up
with other workers' changes; unchanged variables travel neither way."""

from __future__ import annotations

import numpy as np
import pytest

import varstore as vs
from tests.extras import require

exchange_module = require("varstore.tensorflow.exchange")
Exchange, Mirror, VariableSpec = (exchange_module.Exchange, exchange_module.Mirror,
                                  exchange_module.VariableSpec)

pytestmark = pytest.mark.tensorflow

STEP = VariableSpec("global_step", vs.int64, (), trainable=False)
SPECS = [VariableSpec("norm/moving_mean", vs.float32, (2,), trainable=False),
         VariableSpec("seen", vs.int64, (), trainable=False),
         VariableSpec("done", vs.as_dtype("bool"), (), trainable=False),
         VariableSpec("frozen", vs.float32, (3,), trainable=False)]
INITIAL = [np.array([1.0, 2.0], np.float32), np.int64(0), np.bool_(False),
           np.arange(3, dtype=np.float32)]


def test_a_steps_changes_add_to_another_workers_and_come_back(client: vs.Client) -> None:
    exchange = Exchange(client)
    values = exchange.start([*SPECS, STEP], True, [*INITIAL, np.int64(0)])
    mirror = Mirror(SPECS)
    mirror.reset({s.name: v for s, v in zip([*SPECS, STEP], values, strict=True)})
    # Another worker's step lands first.
    mean, seen = exchange.handles(SPECS[:2])
    mean.assign_add([10.0, 10.0])
    seen.assign_add(5)
    frozen_on_server = np.array([7.0, 7.0, 7.0], np.float32)
    exchange.handles(SPECS[3:])[0].assign(frozen_on_server)

    current = [np.array([1.5, 2.5], np.float32), np.int64(2), np.bool_(True), INITIAL[3]]
    out = exchange.push_deltas([], STEP, [], mirror, current)
    np.testing.assert_array_equal(out[0], [11.5, 12.5])
    assert out[1] == 7 and out[2] == np.bool_(True)
    # Unchanged by this step: neither sent nor read back.
    np.testing.assert_array_equal(out[3], INITIAL[3])
    assert out[4] == 1
    on_server = client.pull(exchange.handles(SPECS))
    np.testing.assert_array_equal(on_server[0], [11.5, 12.5])
    assert on_server[1] == 7 and bool(on_server[2])
    np.testing.assert_array_equal(on_server[3], frozen_on_server)

    # The next step's change is counted from what came back.
    out = exchange.push_deltas([], STEP, [], mirror, [out[0] + 1, np.int64(8), *out[2:4]])
    np.testing.assert_array_equal(out[0], [12.5, 13.5])
    assert out[1] == 8


def test_a_variable_never_loaded_from_the_server_is_refused(client: vs.Client) -> None:
    exchange = Exchange(client)
    exchange.start([*SPECS, STEP], True, [*INITIAL, np.int64(0)])
    with pytest.raises(vs.errors.FailedPreconditionError,
                       match="^norm/moving_mean was not loaded from the server: start the "
                             r"worker with SyncHook \(its var_list must hold it\)$"):
        exchange.push_deltas([], STEP, [], Mirror(SPECS), INITIAL)
    assert vs.train.get_or_create_global_step(client).numpy() == 0
