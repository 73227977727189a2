"""Parts of partitioned variables on a real server: slice info checked with exact integers
(refused requests change nothing), saves that write the parts as slices of one tensor, and
restores of any region of a stored tensor, whole or sliced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import varstore as vs
import varstore.v1 as tf
from tests.conftest import folder_names
from varstore import cli, dtypes
from varstore.errors import InvalidArgumentError, NotFoundError, ResourceExhaustedError
from varstore.proto import varstore_pb2 as pb
from varstore.request import RequestBuilder
from varstore.server import ServerConfig, create_server
from varstore.server.app import Server
from varstore.server.bundle import BundleReader, BundleWriter

FULL = np.arange(40, dtype=np.float32).reshape(10, 4)


def _slice(full: list[int], offset: list[int], shape: list[int],
           name: str = "emb") -> pb.SaveSlice:
    return pb.SaveSlice(full_name=name, full_shape=full, offset=offset, shape=shape)


def _part(client: vs.Client, name: str, value: np.ndarray, part: pb.SaveSlice) -> None:
    """Creates server variable ``name`` = ``value`` as slice ``part``."""
    b = RequestBuilder()
    b.variable(name, dtypes.float32, value.shape,
               initializer=b.const(value, dtypes.float32), save_slice=part)
    client.run(b)


def _parts(client: vs.Client, rows: list[int], full: np.ndarray = FULL) -> None:
    """``emb/part_I``: consecutive blocks of ``rows`` rows of ``full``."""
    start = 0
    for i, n in enumerate(rows):
        _part(client, f"emb/part_{i}", full[start:start + n],
              _slice(list(full.shape), [start, 0], [n, 4]))
        start += n


def _entry(key: str, variable: str, offset: list[int] | None = None,
           shape: list[int] | None = None, full: list[int] | None = None
           ) -> pb.CheckpointEntry:
    if offset is None:
        return pb.CheckpointEntry(key=key, variable=variable)
    return pb.CheckpointEntry(key=key, variable=variable,
                              slice=_slice(full or [10, 4], offset, shape or [], name=""))


def _files(server: Server) -> list[str]:
    return folder_names(server.checkpoints.directory)


def _values(client: vs.Client) -> dict[str, np.ndarray]:
    infos = client.list_variables()
    handles = [vs.RemoteVariable(client, v.name, v.dtype, v.shape) for v in infos]
    return dict(zip([v.name for v in infos], client.pull(handles), strict=True))


@pytest.mark.parametrize(("part", "shape", "message"), [
    (_slice([10, 4], [8, 0], [3, 4]), [3, 4], r"offset \[8, 0\] with shape \[3, 4\] lies "
                                              r"outside the full shape \[10, 4\]"),
    (_slice([10, 4], [-1, 0], [3, 4]), [3, 4], "negative size or offset"),
    (_slice([10, -4], [0, 0], [3, 4]), [3, 4], "negative size or offset"),
    (_slice([1 << 40, 1 << 40], [0, 0], [3, 4]), [3, 4],
     "has more than 9223372036854775807 elements"),
    (_slice([10], [0, 0], [3, 4]), [3, 4], "must have one equal rank from 1 to 64"),
    (_slice([], [], []), [], "must have one equal rank"),
    (_slice([10, 4], [0, 0], [3, 4]), [4, 4], r"of shape \[4, 4\] cannot be the slice"),
    (_slice([10, 4], [0, 0], [3, 4], name="a:b"), [3, 4], "invalid variable name 'a:b'"),
    (_slice([10, 4], [0, 0], [3, 4], name=""), [3, 4], "invalid variable name ''"),
])
def test_bad_slice_info_is_refused_and_creates_nothing(client: vs.Client, part: pb.SaveSlice,
                                                       shape: list[int], message: str) -> None:
    b = RequestBuilder()
    b.variable("emb/part_0", dtypes.float32, shape, save_slice=part)
    with pytest.raises(InvalidArgumentError, match=message):
        client.run(b)
    assert client.list_variables() == []


def test_binding_a_part_with_other_slice_info_fails(client: vs.Client) -> None:
    _parts(client, [4, 3, 3])
    with pytest.raises(InvalidArgumentError, match=r"Trying to share variable emb/part_1 as "
                       r"the slice emb 12 4 4,3:0,4, but it is the slice emb 10 4 4,3:0,4\."):
        _part(client, "emb/part_1", FULL[4:7], _slice([12, 4], [4, 0], [3, 4]))
    # Binding without slice info, or with the same, is fine; a plain variable adopts it.
    _part(client, "emb/part_1", FULL[4:7], _slice([10, 4], [4, 0], [3, 4]))
    client.Variable(np.zeros((2, 4), np.float32), name="other")
    _part(client, "other", np.zeros((2, 4), np.float32), _slice([4, 4], [2, 0], [2, 4], "o"))
    infos = {v.name: v.save_slice for v in client.list_variables()}
    assert infos["other"] == _slice([4, 4], [2, 0], [2, 4], "o")
    assert infos["emb/part_1"] == _slice([10, 4], [4, 0], [3, 4])


def test_saving_everything_writes_parts_as_one_tensor(client: vs.Client,
                                                      server: Server) -> None:
    _parts(client, [4, 3, 3])
    client.Variable([1.0, 2.0], name="dense/b")
    assert client.save("model") == "model"
    with BundleReader(server.checkpoints.folder.resolve("model")) as reader:
        assert reader.keys() == ["dense/b", "emb"]
        info = reader.entry("emb")
        assert info.shape == (10, 4) and info.slices == (
            ((0, 0), (4, 4)), ((4, 0), (3, 4)), ((7, 0), (3, 4)))
        np.testing.assert_array_equal(reader.read("emb"), FULL)


@pytest.mark.parametrize(("entries", "message"), [
    ([_entry("emb", "emb/part_0", [0, 0], [4, 4]), _entry("emb", "emb/part_1", [3, 0], [3, 4]),
      _entry("emb", "emb/part_2", [7, 0], [3, 4])], r"at \[0, 0\] and \[3, 0\] overlap"),
    ([_entry("emb", "emb/part_0", [0, 0], [4, 4])],
     r"\(emb/part_0\) do not cover its full shape \[10, 4\]: save every part"),
    ([_entry("emb", "emb/part_0", [8, 0], [4, 4])], "lies outside the full shape"),
    ([_entry("emb", "emb/part_0", [0, 0], [3, 4]), _entry("emb", "emb/part_1", [3, 0], [3, 4]),
      _entry("emb", "emb/part_2", [6, 0], [4, 4])],
     r"variable 'emb/part_0' has shape \[4, 4\], not the shape of its slice"),
    ([_entry("emb", "emb/part_0", [0, 0], [4, 4]), _entry("emb", "emb/part_1")],
     "checkpoint key 'emb' is listed twice"),
    ([pb.CheckpointEntry(key="emb", variable="emb/part_0",
                         slice=_slice([10, 4], [0, 0], [4, 4], "other"))],
     "the slice of checkpoint key 'emb' names another tensor, 'other'"),
])
def test_bad_slices_in_a_save_are_refused_and_write_nothing(
        client: vs.Client, server: Server, entries: list[pb.CheckpointEntry],
        message: str) -> None:
    _parts(client, [4, 3, 3])
    with pytest.raises(InvalidArgumentError, match=message):
        client.save("model", entries)
    assert _files(server) == []


def test_a_key_that_is_a_variable_and_parts_is_refused(client: vs.Client,
                                                       server: Server) -> None:
    _parts(client, [5, 5])
    client.Variable(np.zeros((10, 4), np.float32), name="emb")
    with pytest.raises(InvalidArgumentError, match="checkpoint key 'emb' would hold both "
                                                   "variable 'emb' and 'emb/part_0'"):
        client.save("model")
    assert _files(server) == []


def test_entries_restore_regions_of_whole_and_sliced_tensors(client: vs.Client,
                                                             server: Server) -> None:
    client.Variable(FULL, name="emb")
    client.save("whole")
    client.delete(["emb"])
    _parts(client, [4, 3, 3], np.zeros_like(FULL))
    client.save("sliced")
    # The unpartitioned checkpoint restores into the parts, read region by region.
    client.restore("whole", [_entry("emb", f"emb/part_{i}", [s, 0], [n, 4])
                             for i, (s, n) in enumerate([(0, 4), (4, 3), (7, 3)])])
    values = _values(client)
    np.testing.assert_array_equal(np.concatenate([values[f"emb/part_{i}"] for i in range(3)]),
                                  FULL)
    client.save("sliced")
    # Regions crossing stored slices, into new variables that become parts.
    client.restore("sliced", [_entry("emb", "re/part_0", [0, 0], [6, 4]),
                              _entry("emb", "re/part_1", [6, 0], [4, 4])])
    values = _values(client)
    np.testing.assert_array_equal(values["re/part_0"], FULL[:6])
    np.testing.assert_array_equal(values["re/part_1"], FULL[6:])
    assert [v.save_slice.offset for v in client.list_variables("re")
            if v.save_slice is not None] == [[0, 0], [6, 0]]
    before = _values(client)
    with pytest.raises(InvalidArgumentError, match=r"cannot restore variable re/part_0 as the "
                       r"slice emb 12 4 0,6:0,4 of key emb .*the full shapes differ"):
        client.restore("sliced", [_entry("emb", "re/part_0", [0, 0], [6, 4], [12, 4]),
                                  _entry("emb", "re/part_1", [6, 0], [4, 4])])
    with pytest.raises(InvalidArgumentError, match=r"cannot restore variable re/part_1 "
                                                   r"\(float32 \[4, 4\]\) from key emb"):
        client.restore("sliced", [_entry("emb", "re/part_1", [4, 0], [6, 4])])
    with pytest.raises(NotFoundError, match="Key nope not found"):
        client.restore("sliced", [_entry("nope", "re/part_1", [6, 0], [4, 4])])
    after = _values(client)
    assert before.keys() == after.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


def test_restoring_everything_fills_the_servers_parts_re_sliced(client: vs.Client) -> None:
    _parts(client, [5, 5])
    client.save("two")
    client.reset()
    _parts(client, [4, 3, 3], np.zeros_like(FULL))
    client.restore("two")
    values = _values(client)
    assert sorted(values) == ["emb/part_0", "emb/part_1", "emb/part_2"]
    np.testing.assert_array_equal(np.concatenate([values[f"emb/part_{i}"] for i in range(3)]),
                                  FULL)


def test_a_region_read_is_charged_to_the_memory_budget(tmp_path: Path) -> None:
    value = np.arange(250_000, dtype=np.float32).reshape(1000, 250)  # 1 MB
    with BundleWriter(tmp_path / "whole") as writer:
        writer.add("emb", value, dtypes.float32)
    with BundleWriter(tmp_path / "sliced") as writer:
        for start in range(0, 1000, 100):
            writer.add_slice("emb", value.shape, [start, 0], value[start:start + 100],
                             dtypes.float32)
    server = create_server(ServerConfig(host="127.0.0.1", port=0, checkpoint_dir=tmp_path,
                                        max_memory=1_050_000))
    server.start()
    part = [_entry("emb", "emb/part_0", [0, 0], [100, 250], [1000, 250])]
    try:
        with vs.Client(f"127.0.0.1:{server.port}") as client:
            # A part of 100 KB, but a tensor stored whole is read whole: 1.1 MB at once.
            with pytest.raises(ResourceExhaustedError, match="restoring emb/part_0 from whole"):
                client.restore("whole", part)
            assert client.list_variables() == []
            # Stored in slices, only the slice it needs is read.
            client.restore("sliced", part)
            assert [v.nbytes for v in client.list_variables()] == [100_000]
            np.testing.assert_array_equal(_values(client)["emb/part_0"], value[:100])
    finally:
        server.stop(grace=1.0)


def test_ls_shows_where_a_part_lies(client: vs.Client, address: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    with tf.Graph().as_default():
        tf.get_variable("emb", [10, 4], partitioner=tf.fixed_size_partitioner(2))
        with tf.Session(address) as sess:
            sess.run(tf.global_variables_initializer())
    assert cli.main(["ls", "--address", address]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "emb/part_0\tfloat32\t[5, 4]  (part of emb [10, 4] at [0, 0])",
        "emb/part_1\tfloat32\t[5, 4]  (part of emb [10, 4] at [5, 0])"]


def test_one_part_is_deleted_only_with_the_others(client: vs.Client, address: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # `varstore rm emb/part_1` succeeded, then every save of the store failed ("the parts
    # saved under 'emb' do not cover its full shape"), the exit save too (attack5 11).
    with tf.Graph().as_default():
        tf.get_variable("emb", [10, 4], partitioner=tf.fixed_size_partitioner(2))
        tf.get_variable("c", [], dtype=tf.int64, initializer=tf.zeros_initializer())
        with tf.Session(address) as sess:
            sess.run(tf.global_variables_initializer())
    refusal = ("cannot delete emb/part_1 alone: it is a part of the partitioned variable "
               "'emb', whose part emb/part_0 would stay and no checkpoint could hold it; "
               "delete every part, or the variable by its name 'emb'")
    assert cli.main(["rm", "--address", address, "emb/part_1"]) == 1
    assert refusal in capsys.readouterr().err
    with pytest.raises(InvalidArgumentError, match="^cannot delete emb/part_1 alone"):
        client.delete(scope="emb/part_1")
    assert [v.name for v in client.list_variables()] == ["c", "emb/part_0", "emb/part_1"]
    assert client.save("m") == "m"
    assert client.delete(["emb"]) == ["emb/part_0", "emb/part_1"]
    assert [v.name for v in client.list_variables()] == ["c"]
