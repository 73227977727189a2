"""Chunked transfers, batching and streaming are exact at every size and for every dtype."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

import varstore as vs
from varstore import dtypes
from varstore.common import codec
from varstore.errors import InvalidArgumentError
from varstore.proto import varstore_pb2 as pb
from varstore.proto import varstore_pb2_grpc as pb_grpc
from varstore.request import RequestBuilder

KB = 1 << 10
# Payload sizes where the adaptive chunk size changes regime, and the chunk edges themselves.
BOUNDARIES = [codec.MIN_CHUNK_BYTES * 8, codec.CHUNK_BYTES * 8]


def _sizes() -> list[int]:
    out = {0, 1, 7}
    for total in BOUNDARIES:
        out |= {total - 1, total, total + 1}
    for chunk in (codec.MIN_CHUNK_BYTES, codec.CHUNK_BYTES):
        out |= {chunk - 1, chunk, chunk + 1, 3 * chunk + 5}
    return sorted(out)


def _roundtrip(arrays: list[np.ndarray], chunk_bytes: int | None = None) -> list[np.ndarray]:
    """Packs arrays as a streamed request and reads them back through the wire encoding."""
    pairs = [(a, dtypes.as_dtype(a.dtype)) for a in arrays]
    header = pb.RunChunk()
    payloads = codec.pack_tensors(pairs, True, header.request.tensors)
    wire = [codec.serialize_chunk(c)
            for c in codec.split_chunks(header, payloads, chunk_bytes)]
    head, streamed = codec.join_chunks((codec.parse_chunk(w) for w in wire), "request",
                                         1 << 40)
    return [s if s is not None else codec.tensor_from_proto(t)
            for t, s in zip(head.tensors, streamed, strict=True)]


@pytest.mark.parametrize("nbytes", _sizes())
def test_split_and_join_at_chunk_boundaries(nbytes: int) -> None:
    data = np.frombuffer(np.random.default_rng(nbytes).bytes(nbytes), np.uint8)
    (back,) = _roundtrip([data])
    assert back.tobytes() == data.tobytes()


def test_chunks_span_tensors_and_keep_their_order() -> None:
    rng = np.random.default_rng(0)
    arrays = [rng.random(n).astype(np.float32) for n in (1, 1000, 0, 70_000, 3, 300_000)]
    arrays.append(np.array([b"", b"ab", b"\x00" * 100_000], dtype=object))
    for chunk in (7, 64 * KB, None):
        back = _roundtrip(arrays, chunk)
        assert all(b.shape == a.shape for a, b in zip(arrays, back, strict=True))
        assert all(np.array_equal(a, b) for a, b in zip(arrays, back, strict=True))


def test_data_frames_are_runchunk_messages() -> None:
    for n in (0, 1, 127, 128, 16_383, 16_384, codec.CHUNK_BYTES):
        payload = bytes(range(256)) * (n // 256) + b"x" * (n % 256)
        frame = codec.data_frame([payload[: n // 2], payload[n // 2:]])
        assert pb.RunChunk.FromString(frame).data == payload
        assert bytes(codec.parse_chunk(frame).data) == payload
    mixed = pb.RunChunk(data=b"abc", response=pb.RunResponse()).SerializeToString()
    parsed = codec.parse_chunk(mixed)
    assert isinstance(parsed, pb.RunChunk) and parsed.data == b"abc"


def test_malformed_streams_are_rejected() -> None:
    frame = codec.data_frame([b"abcd"])
    with pytest.raises(InvalidArgumentError, match="does not start with a header"):
        codec.join_chunks([codec.parse_chunk(frame)], "request", 1 << 20)
    header = pb.RunChunk(request=pb.RunRequest(tensors=[pb.Tensor(
        dtype=vs.uint8.enum, shape=[3], streamed_bytes=3)]))
    with pytest.raises(InvalidArgumentError, match="more bytes than its header declares"):
        codec.join_chunks([header, codec.parse_chunk(frame)], "request", 1 << 20)
    with pytest.raises(InvalidArgumentError, match="ended before all tensor bytes"):
        codec.join_chunks([header], "request", 1 << 20)


STREAMED_DTYPES = [vs.float16, vs.bfloat16, vs.float32, vs.float64, vs.int8, vs.int16,
                   vs.int32, vs.int64, vs.uint8, vs.uint16, vs.uint32, vs.uint64, vs.complex64,
                   vs.complex128, vs.bool_]


@pytest.mark.parametrize("dtype", STREAMED_DTYPES, ids=lambda d: d.name)
def test_every_dtype_streams_both_ways(client: vs.Client, dtype: vs.DType) -> None:
    n = codec.STREAM_THRESHOLD // dtype.itemsize + 3
    rng = np.random.default_rng(1)
    value = dtypes.to_numpy(rng.integers(0, 2 if dtype == vs.bool_ else 100, n), dtype)
    var = client.get_variable(f"d_{dtype.name}", [n], dtype=dtype,
                              initializer=vs.zeros_initializer)
    var.assign(value)
    back = var.numpy()
    assert back.dtype == dtype.np_dtype and np.array_equal(back, value)


def test_strings_in_streams(client: vs.Client) -> None:
    words = np.array([b"w%d" % i * (i % 7) for i in range(60_000)], dtype=object)
    assert sum(len(w) for w in words) + 8 * words.size > codec.STREAM_THRESHOLD
    var = client.Variable(np.array([b""] * words.size, dtype=object), name="words")
    var.assign(words)
    assert var.numpy().tolist() == words.tolist()
    assert var.gather([59_999, 0, 8]).tolist() == [words[59_999], b"", words[8]]


def test_many_variables_in_one_request(client: vs.Client) -> None:
    sizes = [1, 1000, 0, 300_000, 17, 2 * codec.CHUNK_BYTES // 4 + 1] * 5
    rng = np.random.default_rng(2)
    values = [rng.random(n).astype(np.float32) for n in sizes]
    with client.variable_scope("many"):
        variables = [client.get_variable(f"v{i}", [n], initializer=vs.zeros_initializer)
                     for i, n in enumerate(sizes)]
    client.push(dict(zip(variables, values, strict=True)))
    pulled = client.pull(variables)
    assert all(np.array_equal(a, b) for a, b in zip(values, pulled, strict=True))


def test_framed_tensors_stream_as_equal_frames_between_packed_ones() -> None:
    rng = np.random.default_rng(3)
    small = rng.random(1000).astype(np.float32)
    big = rng.random(5 * codec.CHUNK_BYTES // 8 + 3).astype(np.float32)  # 2.5 MB: 3 frames
    flags = rng.random(codec.FRAMED_BYTES) < 0.5
    framed = [codec.Framed(big, dtypes.float32), codec.Framed(flags, dtypes.bool_)]
    assert [len(f.frames) for f in framed] == [3, 1]
    sizes = [len(frame) for frame in framed[0].frames]
    assert max(sizes) - min(sizes) < len(sizes) and max(sizes) <= codec.CHUNK_BYTES + 8
    header = pb.RunChunk()
    payloads = codec.pack_tensors([(small, dtypes.float32), (framed[0], dtypes.float32),
                                   (small, dtypes.float32), (framed[1], dtypes.bool_)],
                                  True, header.response.values)
    wire = [codec.serialize_chunk(c) for c in codec.split_chunks(header, payloads)]
    assert len(wire) == 1 + 1 + 3 + 1 + 1  # header, small, big's frames, small, flags
    head, streamed = codec.join_chunks((codec.parse_chunk(w) for w in wire), "response",
                                         1 << 40)
    assert [list(t.shape) for t in head.values] == [[1000], [big.size], [1000], [flags.size]]
    for want, got in zip([small, big, small, flags], streamed, strict=True):
        assert got is not None and got.dtype == want.dtype and np.array_equal(got, want)


def test_a_large_pull_is_a_copy_of_the_values_when_read(client: vs.Client) -> None:
    n = codec.FRAMED_BYTES // 4 + 5
    big = client.get_variable("big_read", [2, n], initializer=vs.ones_initializer)
    other = client.get_variable("big_other", [n], initializer=vs.zeros_initializer)
    small = client.get_variable("small_read", [3], initializer=vs.ones_initializer)
    pulled = client.pull([big, small, other])
    big.assign_add(np.ones([2, n], np.float32))
    other.assign(np.full([n], 7, np.float32))
    assert [p.shape for p in pulled] == [(2, n), (3,), (n,)]
    assert (pulled[0] == 1).all() and (pulled[1] == 1).all() and (pulled[2] == 0).all()
    pulled[0] += 1  # the pulled arrays are the caller's own
    assert (pulled[0] == 2).all() and (client.pull([big])[0] == 2).all()


def test_batched_request_applies_every_op(client: vs.Client) -> None:
    counter = client.get_variable("counter", [], dtype=vs.int64,
                                  initializer=vs.zeros_initializer)
    big = client.get_variable("big", [codec.STREAM_THRESHOLD // 4 + 9],
                              initializer=vs.zeros_initializer)
    b = RequestBuilder()
    one = b.const(np.int64(1), vs.int64)
    for _ in range(500):
        b.target(b.node("assign_add", [one], variable=counter.op_name))
    ones = b.const(np.ones(big.shape, np.float32), vs.float32)
    b.target(b.node("assign_add", [ones], variable=big.op_name))
    b.fetch(b.node("read", variable=counter.op_name))
    b.fetch(b.node("read", variable=big.op_name))
    for _ in range(2):
        (total, values), _ = client.run(b)
    assert int(total) == 1000 and values.shape == big.shape and (values == 2).all()


def test_a_plain_protobuf_peer_can_stream(client: vs.Client) -> None:
    """The chunk codec is the protobuf encoding: the generated stub talks to the server."""
    var = client.get_variable("plain", [5], dtype=vs.uint8, initializer=vs.zeros_initializer)
    request = pb.RunRequest(
        tensors=[pb.Tensor(dtype=vs.uint8.enum, shape=[5], streamed_bytes=5)],
        nodes=[pb.Node(op="const", tensor=0), pb.Node(op="assign", inputs=[0],
                                                      variable="plain")],
        fetches=[1])
    chunks = [pb.RunChunk(request=request), pb.RunChunk(data=b"\x01\x02"),
              pb.RunChunk(data=b"\x03\x04\x05")]
    stub = pb_grpc.VariableServiceStub(client.transport.channel)
    replies = list(stub.RunStream(iter(chunks)))
    header, data = replies[0].response, b"".join(r.data for r in replies[1:])
    assert header.values[0].streamed_bytes == 5 and data == b"\x01\x02\x03\x04\x05"
    assert var.numpy().tolist() == [1, 2, 3, 4, 5]


def test_large_run_requests_parse_with_their_tensors_apart() -> None:
    b = RequestBuilder()
    b.variable("w", dtypes.float32, [300, 64], initializer=b.node("zeros", dtype=dtypes.float32,
                                                                   shape=[300, 64]))
    rows = b.const(np.arange(300, dtype=np.int64), dtypes.int64)
    updates = b.const(np.ones((300, 64), np.float32), dtypes.float32)
    words = b.const(np.array([b"a", b"\xff" * 70_000], dtype=object), dtypes.string)
    b.fetch(b.node("scatter_add", [rows, updates], variable="w"))
    b.fetch(words)
    b.target(b.node("no_op", control_inputs=[rows]))
    request, _ = b.build(stream=False)
    raw = request.SerializeToString()
    assert len(raw) > codec.SPLIT_PARSE_BYTES
    header, tensors = codec.parse_run_request(raw)
    assert list(tensors) == list(request.tensors) and not header.tensors
    header.tensors.extend(tensors)
    assert header == request
    small, _ = RequestBuilder().build(stream=False)
    assert codec.parse_run_request(small.SerializeToString()) == (small, [])
    with pytest.raises(DecodeError):
        codec.parse_run_request(raw[:-1])
    with pytest.raises(DecodeError):
        codec.parse_run_request(b"\x0f" + raw[1:])  # a first tag of wire type 7


def test_a_large_unary_request_through_the_server(client: vs.Client) -> None:
    table = client.get_variable("table", [1000, 64], initializer=vs.zeros_initializer)
    rows = np.array([3, 999, 3, 0] * 256)
    assert rows.size * 64 * 4 > codec.SPLIT_PARSE_BYTES  # a unary request split to parse
    table.scatter_add(rows, np.ones((rows.size, 64), np.float32))
    value = table.numpy()
    assert value[3].tolist() == [512.0] * 64 and value[999, 0] == 256 and value[1, 0] == 0


def test_repeated_requests_run_afresh_each_time(client: vs.Client) -> None:
    """The server reuses the graph of a request it saw before; its constants stay unchanged
    and every run sees the variables as they are now."""
    acc = client.get_variable("acc", [3], initializer=vs.zeros_initializer)
    reset = RequestBuilder()
    ones = reset.const(np.ones(3, np.float32), dtypes.float32)
    reset.fetch(reset.node("assign", [ones], variable="acc"))
    reset.fetch(ones)
    for _ in range(3):
        (value, constant), _ = client.run(reset)
        assert value.tolist() == [1, 1, 1] and constant.tolist() == [1, 1, 1]
        acc.assign_add(np.full(3, 2, np.float32))  # in place, on the array assign stored
        assert acc.numpy().tolist() == [3, 3, 3]
    bogus = RequestBuilder()
    bogus.fetch(bogus.node("bogus"))
    for _ in range(2):
        with pytest.raises(InvalidArgumentError, match="unknown op"):
            client.run(bogus)


def test_a_pushed_value_used_twice_gives_each_variable_its_own_array(client: vs.Client) -> None:
    """The server keeps a streamed value as a variable's array only when nothing else in the
    request uses it."""
    n = codec.STREAM_THRESHOLD // 4 + 1
    a, b = (client.get_variable(name, [n], initializer=vs.zeros_initializer)
            for name in ("twin_a", "twin_b"))
    builder = RequestBuilder()
    value = builder.const(np.arange(n, dtype=np.float32), dtypes.float32)
    builder.target(builder.node("assign", [value], variable="twin_a"))
    builder.target(builder.node("assign", [value], variable="twin_b"))
    client.run(builder)
    a.assign_add(np.ones(n, np.float32))  # in place: b must not see it
    assert a.numpy()[:3].tolist() == [1, 2, 3] and b.numpy()[:3].tolist() == [0, 1, 2]
    client.push({a: np.ones(n, np.float32)})  # a streamed value used once: kept as it is
    a.assign_add(np.ones(n, np.float32))
    assert a.numpy()[:3].tolist() == [2, 2, 2] and b.numpy()[:3].tolist() == [0, 1, 2]
