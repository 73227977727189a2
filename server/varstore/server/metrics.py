"""Prometheus metrics of one server, and the interceptor that measures every call.

Each server has its own ``CollectorRegistry`` (several servers may live in one process) and,
with ``--metrics-port``, an HTTP endpoint serving it at ``/metrics``. Every metric name starts
with ``varstore_``.

:class:`MetricsInterceptor` sees each message as the bytes that travelled: it counts them and
parses them itself, so a request that does not parse is INVALID_ARGUMENT (gRPC's own parsing
would report INTERNAL) and is still counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from varstore.common.errors import InvalidArgumentError, OpError
from varstore.server.handlers import WrapperCache, behavior_of, method_handler, short_name
from varstore.server.load import LoadMeter
from varstore.server.store import VariableStore

# From a sub-millisecond read to a multi-gigabyte stream.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0, 30.0, 60.0, 300.0)
CHECKPOINT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class ServerMetrics:
    """The metrics of one server: calls, bytes, the store's size and checkpoints.

    ``observe_checkpoint`` is the hook the checkpoint code calls after each save or restore.
    """

    def __init__(self, store: VariableStore) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("varstore_requests", "Calls finished, by method and status code",
                                ["method", "code"], registry=r)
        self.latency = Histogram("varstore_request_duration_seconds",
                                 "Time from a call's start to its last message, by method",
                                 ["method"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("varstore_requests_in_flight", "Calls being handled, by method",
                               ["method"], registry=r)
        self.received = Counter("varstore_received_bytes", "Request message bytes, by method",
                                ["method"], registry=r)
        self.sent = Counter("varstore_sent_bytes", "Response message bytes, by method",
                            ["method"], registry=r)
        Gauge("varstore_variables", "Variables in the store",
              registry=r).set_function(lambda: len(store))
        Gauge("varstore_stored_bytes", "Bytes reserved by the store's variables",
              registry=r).set_function(store.bytes_stored)
        self.checkpoints = Counter("varstore_checkpoints",
                                   "Checkpoints written or restored, by kind", ["kind"],
                                   registry=r)
        self.checkpoint_seconds = Histogram("varstore_checkpoint_duration_seconds",
                                            "Time a checkpoint took, by kind", ["kind"],
                                            buckets=CHECKPOINT_BUCKETS, registry=r)
        self.checkpoint_bytes = Gauge("varstore_checkpoint_last_bytes",
                                      "Tensor bytes of the last checkpoint, by kind", ["kind"],
                                      registry=r)
        self.checkpoint_time = Gauge("varstore_checkpoint_last_timestamp_seconds",
                                     "Unix time the last checkpoint finished, by kind", ["kind"],
                                     registry=r)
        self._http: WSGIServer | None = None
        self.load = LoadMeter(lambda: _total(self.requests, "_total"),
                              lambda: _total(self.in_flight, ""))

    def observe_checkpoint(self, kind: str, seconds: float, nbytes: int) -> None:
        """Records one finished checkpoint (``kind`` is e.g. "save" or "restore")."""
        self.checkpoints.labels(kind).inc()
        self.checkpoint_seconds.labels(kind).observe(seconds)
        self.checkpoint_bytes.labels(kind).set(nbytes)
        self.checkpoint_time.labels(kind).set(time.time())

    def serve_http(self, host: str, port: int) -> int:
        """Serves ``/metrics`` over HTTP on ``host:port`` (0 picks a free port); returns the port.

        Raises ``OSError`` when the address cannot be bound.
        """
        try:
            self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise OSError(f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        return int(self._http.server_port)

    def close(self) -> None:
        """Stops the HTTP endpoint, if any, and the load sampler."""
        self.load.close()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts calls, their status codes, latency and message bytes into a :class:`ServerMetrics`."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self._wrapped = WrapperCache(
            lambda handler, method: _MeasuredCall(metrics, short_name(method), handler).handler())

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        return self._wrapped.wrap(details, continuation(details))


class _MeasuredCall:
    """Wraps one method's handler: raw bytes in and out, timing and the final status code."""

    def __init__(self, metrics: ServerMetrics, method: str, handler: grpc.RpcMethodHandler
                 ) -> None:
        self.metrics = metrics
        self.method = method
        self.inner = handler
        self.received = metrics.received.labels(method)
        self.sent = metrics.sent.labels(method)
        self.latency = metrics.latency.labels(method)
        self.in_flight = metrics.in_flight.labels(method)
        self.finished: dict[str, Any] = {}  # requests.labels(method, code) by code name

    def handler(self) -> grpc.RpcMethodHandler:
        """A handler of the same kind that takes and returns raw bytes."""
        h = self.inner
        parse = self._parse_stream if h.request_streaming else self._parse
        wrap = self._stream_out if h.response_streaming else self._unary_out
        return method_handler(h.request_streaming, h.response_streaming,
                              wrap(behavior_of(h), parse), response_serializer=self._serialize)

    def _parse(self, data: bytes) -> Any:
        self.received.inc(len(data))
        deserialize = self.inner.request_deserializer
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends
            raise InvalidArgumentError(
                f"malformed {self.method} request ({len(data)} bytes)") from None

    def _parse_stream(self, chunks: Iterator[bytes]) -> Iterator[Any]:
        for data in chunks:
            yield self._parse(data)

    def _serialize(self, message: Any) -> bytes:
        serialize = self.inner.response_serializer
        data = message if serialize is None else serialize(message)
        self.sent.inc(len(data))
        return data

    def _unary_out(self, behavior: Callable[..., Any], parse: Callable[[Any], Any]
                   ) -> Callable[[Any, grpc.ServicerContext], Any]:
        def call(request: Any, context: grpc.ServicerContext) -> Any:
            start = self._begin()
            outcome = grpc.StatusCode.UNKNOWN
            try:
                response = behavior(parse(request), context)
                outcome = grpc.StatusCode.OK
                return response
            except Exception as e:
                outcome = _code_of(e)
                raise
            finally:
                self._end(context, start, outcome)
        return call

    def _stream_out(self, behavior: Callable[..., Any], parse: Callable[[Any], Any]
                    ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def call(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            start = self._begin()
            outcome = grpc.StatusCode.UNKNOWN
            try:
                yield from behavior(parse(request), context)
                outcome = grpc.StatusCode.OK
            except GeneratorExit:
                outcome = grpc.StatusCode.CANCELLED
                raise
            except Exception as e:
                outcome = _code_of(e)
                raise
            finally:
                self._end(context, start, outcome)
        return call

    def _begin(self) -> float:
        self.in_flight.inc()
        return time.perf_counter()

    def _end(self, context: grpc.ServicerContext, start: float, outcome: grpc.StatusCode
             ) -> None:
        """Records a finished call; ``outcome`` is its code unless the handler set one."""
        self.latency.observe(time.perf_counter() - start)
        self.in_flight.dec()
        # types-grpcio lacks ServicerContext.code(), which grpcio has (experimental API).
        code = (context.code() or outcome).name  # type: ignore[attr-defined]
        counter = self.finished.get(code)
        if counter is None:
            counter = self.finished[code] = self.metrics.requests.labels(self.method, code)
        counter.inc()


def _total(metric: Counter | Gauge, suffix: str) -> float:
    """The sum of ``metric``'s samples named with ``suffix`` over every label."""
    return sum(sample.value for family in metric.collect() for sample in family.samples
               if sample.name == family.name + suffix)


def _code_of(error: Exception) -> grpc.StatusCode:
    """The status a call that raised ``error`` ends with (status.StatusInterceptor maps it)."""
    return error.code if isinstance(error, OpError) else grpc.StatusCode.INTERNAL
