"""``tf.assign(v, value, validate_shape=False)``: the server variable takes the value's shape
(TF 1.x's reference variables), its memory is accounted, and a failed request undoes it."""

from __future__ import annotations

import pytest

import varstore as vs
import varstore.v1 as tf


def test_assign_without_shape_validation_reshapes_and_is_undone_on_failure(
        address: str, client: vs.Client) -> None:
    with tf.Graph().as_default():
        v = tf.Variable([1.0, 2.0], name="v")
        other = tf.Variable(0.0, name="other")
        longer = tf.assign(v, [1.0, 2.0, 3.0, 4.0], validate_shape=False)
        with tf.Session(address) as sess:
            sess.run(v.initializer)
            assert client.status().bytes_stored == 8
            with pytest.raises(tf.errors.FailedPreconditionError, match="value other"):
                sess.run([longer, other])
            assert sess.run(v).tolist() == [1.0, 2.0]
            assert [(i.name, i.shape) for i in client.list_variables()] == [("v", (2,))]
            assert client.status().bytes_stored == 8
            assert sess.run(longer).tolist() == [1.0, 2.0, 3.0, 4.0]
            assert [(i.name, i.shape) for i in client.list_variables()] == [("v", (4,))]
            assert client.status().bytes_stored == 16
            # As in TF, the initializer's assign validates the shape: it now differs.
            with pytest.raises(tf.errors.InvalidArgumentError,
                               match=r"value has shape \[2\], variable has shape \[4\]"):
                sess.run(v.initializer)
            sess.run(tf.assign(v, [5.0], validate_shape=False))
            assert sess.run(v).tolist() == [5.0]
            assert client.status().bytes_stored == 4
