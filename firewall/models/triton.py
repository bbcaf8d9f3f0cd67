"""Model detectors served by a shared NVIDIA Triton Inference Server (KServe v2 over HTTP).

Why this exists
---------------
On a 2-core sidecar the reference language model costs ~100 ms a request and a GB of
memory per pod (docs/models.md). At fleet scale the heavy models belong on a shared GPU
server that batches across pods: NVIDIA Triton, which speaks the KServe v2 ("Open
Inference") protocol and runs the same ONNX files the sidecar would run in-process
(``deploy/triton/model_repository``). This module is the sidecar's side of that: a small
synchronous v2 client and the two remote backends built on it.

* :class:`TritonSurprisalBackend` implements the reference model's ``_Backend`` protocol
  (``run(ids, mask) -> (surprisal, entropy)``): tokenisation, windows and padding stay in
  the sidecar (:class:`~firewall.models.reference_lm.ReferenceLM`), only the forward pass moves.
* :func:`tensor_specs` and :class:`TritonHTTPClient` are what other remote models build on:
  STRIP's classifier (:class:`detectors.strip.classifier.RemoteTextClassifier`) keeps its
  TF-IDF vectoriser and word pool local (a few hundred KB) and runs the classifier on Triton.

Design choices:

* **Synchronous, stdlib ``http.client``.** Both callers are synchronous and already run off
  the event loop (the micro-batcher's thread, or a CLI), so a blocking client with one
  keep-alive connection per thread is the simplest correct thing; it also works where no
  event loop exists (``calibrate``, ``eval``). No new dependency.
* **Binary tensors.** Requests and responses use Triton's binary tensor data extension (JSON
  header + raw little-endian bytes), not JSON number lists: a 32 x 64 surprisal batch is
  8 KB instead of ~100 KB of text, and parsing it costs nothing. ``compression`` can deflate
  or gzip the request body (STRIP's dense TF-IDF rows are >99% zeros).
* **Timeouts free the thread.** ``timeout_seconds`` bounds the connect and each wait for
  the server; on expiry the call raises :class:`TritonTimeout`, which is also a builtin
  ``TimeoutError``, so the pipeline records a *timeout* finding and the detector's fail mode
  applies. The policy's own ``timeout_seconds`` still bounds the request; this one keeps a
  stuck server from pinning the batcher's worker thread.
* **Readiness follows the server.** Loading checks ``/v2/health/ready``,
  ``/v2/models/{name}/ready`` and the model's metadata (tensor names, types, widths); a
  background thread re-checks every ``health_interval_seconds``, and a refused connection
  marks the backend not ready at once. A detector on a remote backend is therefore not ready
  (``/readyz``, error findings "detector not ready") while Triton is down, and ready again
  when it is back, without a reload.

Errors (all :class:`~firewall.core.errors.DetectorError`, so the policy's fail mode decides)::

    TritonError               the server answered, but not with a usable result
    ├── TritonUnavailable     connection refused/reset, 5xx, or server/model not ready
    └── TritonTimeout         no answer within timeout_seconds (also a TimeoutError)
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal
from urllib.parse import quote, urlsplit

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator

from firewall.core.errors import DetectorError, DetectorTimeout, DetectorUnavailable

__all__ = [
    "TritonEndpoint",
    "TritonError",
    "TritonHTTPClient",
    "TritonSurprisalBackend",
    "TritonTimeout",
    "TritonUnavailable",
    "tensor_specs",
    "wait_ready",
]

log = logging.getLogger("trigger_firewall.triton")

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]

#: KServe v2 datatypes this client sends and reads.
_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_V2_NAMES: Final = {dtype: name for name, dtype in _DTYPES.items()}
_HEADER_LENGTH: Final = "Inference-Header-Content-Length"
# Errors that mean "the connection is gone", not "the server is slow".
_GONE: Final = (ConnectionError, http.client.RemoteDisconnected, http.client.BadStatusLine, BrokenPipeError)


class TritonEndpoint(BaseModel):
    """Where a remote model lives and how long to wait for it. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(
        description="Triton's HTTP endpoint, e.g. http://triton.ml.svc:8000 (a path prefix is kept)."
    )
    model_name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,128}$")
    model_version: str | None = Field(None, pattern=r"^[0-9]{1,9}$", description="Default: Triton's policy.")
    timeout_seconds: float = Field(
        1.0,
        gt=0,
        le=600,
        description="Longest wait for the server per call (connect, send, each read); then a timeout "
        "finding. Keep it at or below the detector's timeout_seconds.",
    )
    connect_timeout_seconds: float = Field(0.5, gt=0, le=60)
    health_interval_seconds: float = Field(
        5.0, ge=0, le=3600, description="Readiness re-check period; 0 turns the background check off."
    )
    compression: Literal["none", "deflate", "gzip"] = Field(
        "none", description="Request body encoding (Triton decompresses deflate and gzip)."
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"expected an http(s)://host[:port] URL, got {value!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"the Triton URL takes no query or fragment: {value!r}")
        return value


class TritonError(DetectorError):
    """Triton answered, but not with a usable result (bad request, wrong tensors)."""


class TritonUnavailable(TritonError, DetectorUnavailable):
    """Triton cannot be reached, answered 5xx, or reports the server or model not ready."""


class TritonTimeout(TritonError, DetectorTimeout, TimeoutError):
    """No answer within ``timeout_seconds``. Also a builtin ``TimeoutError``, so the
    pipeline records it as a detector timeout rather than a generic error."""


def _encode(value: npt.NDArray[Any]) -> tuple[str, bytes]:
    dtype = value.dtype.newbyteorder("<") if value.dtype.byteorder == ">" else value.dtype
    name = _V2_NAMES.get(dtype)
    if name is None:
        raise TypeError(f"no KServe v2 datatype for numpy {value.dtype}")
    return name, np.ascontiguousarray(value, dtype=dtype).tobytes()


class TritonHTTPClient:
    """A minimal KServe v2 HTTP client for one model: readiness, metadata, inference.

    Thread-safe: each thread gets its own keep-alive connection (the batcher's worker and
    the health checker never share one). ``healthy`` is the last known readiness.
    """

    def __init__(self, endpoint: TritonEndpoint, *, detector: str) -> None:
        self.endpoint = endpoint
        self.detector = detector
        parts = urlsplit(endpoint.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        model = f"/v2/models/{quote(endpoint.model_name, safe='')}"
        if endpoint.model_version:
            model += f"/versions/{endpoint.model_version}"
        prefix = parts.path.rstrip("/")
        self._paths = {
            "server_ready": f"{prefix}/v2/health/ready",
            "model_ready": f"{prefix}{model}/ready",
            "metadata": f"{prefix}{model}",
            "config": f"{prefix}/v2/models/{quote(endpoint.model_name, safe='')}/config",
            "infer": f"{prefix}{model}/infer",
        }
        self.healthy = False
        self.last_error: str | None = "not checked yet"
        self.max_batch_size: int | None = None
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None

    @property
    def target(self) -> str:
        """``url#model[/version]``, for logs and ``describe()``."""
        version = f"/{self.endpoint.model_version}" if self.endpoint.model_version else ""
        return f"{self.endpoint.url}#{self.endpoint.model_name}{version}"

    # -- transport -------------------------------------------------------------------

    def _connection(self, fresh: bool) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None and not fresh:
            return conn
        if conn is not None:
            conn.close()
        cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        conn = cls(self._host, self._port, timeout=self.endpoint.connect_timeout_seconds)
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def _drop_connection(self) -> None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One HTTP exchange; a reused connection the server closed is retried once, fresh."""
        timeout = self.endpoint.timeout_seconds
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt == 1)
            reused = conn.sock is not None
            try:
                if conn.sock is None:
                    conn.connect()
                conn.sock.settimeout(timeout)
                conn.request(method, path, body=body, headers=dict(headers or {}))
                response = conn.getresponse()
                data = response.read()
            except TimeoutError as exc:
                self._drop_connection()
                raise TritonTimeout(
                    self.detector, f"Triton {self.target}: no answer within {timeout:g}s ({method} {path})"
                ) from exc
            except _GONE as exc:
                self._drop_connection()
                if reused and attempt == 0:
                    continue  # a keep-alive connection the server had closed: retry on a new one
                self._mark_down(f"{type(exc).__name__}: {exc}")
                raise TritonUnavailable(
                    self.detector, f"Triton {self.target} unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            except OSError as exc:  # DNS failure, no route to host
                self._drop_connection()
                self._mark_down(f"{type(exc).__name__}: {exc}")
                raise TritonUnavailable(
                    self.detector, f"Triton {self.target} unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            if response.will_close:
                self._drop_connection()
            return response.status, response.headers, data
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _json(self, path: str) -> tuple[int, Any]:
        status, _, data = self._request("GET", path)
        try:
            return status, json.loads(data) if data else None
        except ValueError:
            return status, None

    def _mark_down(self, reason: str) -> None:
        if self.healthy:
            log.warning("Triton %s not ready: %s", self.target, reason)
        self.healthy = False
        self.last_error = reason

    # -- health and metadata ---------------------------------------------------------

    def check_ready(self) -> str | None:
        """Check server and model readiness; update ``healthy``; return why not ready, or None."""
        try:
            status, _, _ = self._request("GET", self._paths["server_ready"])
            reason = None if status == 200 else f"server not ready (HTTP {status} on /v2/health/ready)"
            if reason is None:
                status, _, _ = self._request("GET", self._paths["model_ready"])
                if status != 200:
                    reason = f"model {self.endpoint.model_name!r} not ready (HTTP {status})"
        except TritonError as exc:
            reason = str(exc)
        if reason is None:
            if not self.healthy:
                log.info("Triton %s ready", self.target)
            self.healthy = True
            self.last_error = None
        else:
            self._mark_down(reason)
        return reason

    def metadata(self) -> dict[str, Any]:
        """The model's v2 metadata: ``{"name", "versions", "platform", "inputs", "outputs"}``."""
        status, data = self._json(self._paths["metadata"])
        if status != 200 or not isinstance(data, dict):
            raise TritonUnavailable(self.detector, f"Triton {self.target}: no model metadata (HTTP {status})")
        return data

    def read_max_batch_size(self) -> int | None:
        """``max_batch_size`` from Triton's model-configuration extension (None: unknown/0)."""
        try:
            status, data = self._json(self._paths["config"])
        except TritonError:
            return None
        size = data.get("max_batch_size") if status == 200 and isinstance(data, dict) else None
        self.max_batch_size = int(size) if isinstance(size, int) and size > 0 else None
        return self.max_batch_size

    def connect(self) -> dict[str, Any]:
        """Readiness + metadata + batch limit, for a backend's load step; raises when not ready."""
        reason = self.check_ready()
        if reason is not None:
            raise TritonUnavailable(self.detector, f"Triton {self.target}: {reason}")
        meta = self.metadata()
        self.read_max_batch_size()
        return meta

    def start_monitor(self) -> None:
        """Re-check readiness every ``health_interval_seconds`` in a daemon thread."""
        interval = self.endpoint.health_interval_seconds
        if interval <= 0 or self._monitor is not None:
            return
        self._stop.clear()
        self._monitor = threading.Thread(
            target=self._watch, args=(interval,), name=f"triton-health-{self.detector}", daemon=True
        )
        self._monitor.start()

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.check_ready()
        self._drop_connection()

    def close(self) -> None:
        """Stop the health thread and close every connection."""
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=self.endpoint.timeout_seconds + self.endpoint.connect_timeout_seconds)
            self._monitor = None
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self.healthy = False
        self.last_error = "closed"

    # -- inference -------------------------------------------------------------------

    def infer(
        self, inputs: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        """One v2 inference call with binary tensors; rows beyond ``max_batch_size`` are split."""
        rows = next(iter(inputs.values())).shape[0] if inputs else 0
        limit = self.max_batch_size
        if limit is None or rows <= limit:
            return self._infer_once(inputs, outputs)
        parts = [
            self._infer_once({k: v[start : start + limit] for k, v in inputs.items()}, outputs)
            for start in range(0, rows, limit)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in outputs}

    def _infer_once(
        self, inputs: Mapping[str, npt.NDArray[Any]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        specs: list[dict[str, Any]] = []
        blobs: list[bytes] = []
        for name, value in inputs.items():
            datatype, raw = _encode(value)
            specs.append(
                {
                    "name": name,
                    "shape": list(value.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            )
            blobs.append(raw)
        header = json.dumps(
            {
                "inputs": specs,
                "outputs": [{"name": name, "parameters": {"binary_data": True}} for name in outputs],
            },
            separators=(",", ":"),
        ).encode()
        body = b"".join([header, *blobs])
        headers = {"Content-Type": "application/octet-stream", _HEADER_LENGTH: str(len(header))}
        if self.endpoint.compression == "deflate":
            body = zlib.compress(body, 1)
            headers["Content-Encoding"] = "deflate"
        elif self.endpoint.compression == "gzip":
            body = gzip.compress(body, 1)
            headers["Content-Encoding"] = "gzip"
        status, response_headers, data = self._request("POST", self._paths["infer"], body, headers)
        if status != 200:
            message = _error_message(data)
            if status >= 500:
                self._mark_down(f"HTTP {status}: {message}")
                raise TritonUnavailable(self.detector, f"Triton {self.target}: HTTP {status}: {message}")
            raise TritonError(self.detector, f"Triton {self.target}: HTTP {status}: {message}")
        return self._decode(data, response_headers.get(_HEADER_LENGTH), outputs)

    def _decode(
        self, data: bytes, header_length: str | None, wanted: Sequence[str]
    ) -> dict[str, npt.NDArray[Any]]:
        try:
            size = int(header_length) if header_length is not None else len(data)
            doc = json.loads(data[:size])
            offset = size
            out: dict[str, npt.NDArray[Any]] = {}
            for item in doc["outputs"]:
                dtype = _DTYPES[item["datatype"]]
                shape = tuple(int(d) for d in item["shape"])
                nbytes = (item.get("parameters") or {}).get("binary_data_size")
                if nbytes is not None:
                    array = np.frombuffer(
                        data, dtype=dtype, count=int(nbytes) // dtype.itemsize, offset=offset
                    )
                    offset += int(nbytes)
                else:
                    array = np.asarray(item["data"], dtype=dtype)
                out[item["name"]] = array.reshape(shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise TritonError(
                self.detector,
                f"Triton {self.target}: malformed inference response ({type(exc).__name__}: {exc})",
            ) from exc
        missing = [name for name in wanted if name not in out]
        if missing:
            raise TritonError(self.detector, f"Triton {self.target}: response lacks outputs {missing}")
        return out


def _error_message(data: bytes) -> str:
    try:
        doc = json.loads(data)
    except ValueError:
        return data[:200].decode("utf-8", "replace")
    return str(doc.get("error", doc)) if isinstance(doc, dict) else str(doc)[:200]


def tensor_specs(meta: Mapping[str, Any], key: str) -> dict[str, dict[str, Any]]:
    items = meta.get(key)
    return (
        {t["name"]: t for t in items if isinstance(t, dict) and "name" in t}
        if isinstance(items, list)
        else {}
    )


# -- the reference language model ------------------------------------------------------------


class TritonSurprisalBackend:
    """The reference model's forward pass on Triton (``_Backend`` protocol of reference_lm).

    The served graph is the prepared surprisal head (``model.onnx``: ``input_ids`` and
    ``attention_mask`` in, ``surprisal`` and optionally ``entropy`` out, ``[B, T-1]``).
    Graphs that output full logits are refused: 32 x 64 logits are 400 MB on the wire.
    """

    name = "triton"
    device = "remote"

    def __init__(self, client: TritonHTTPClient, inputs: Sequence[str], has_entropy: bool) -> None:
        self.client = client
        self.inputs = frozenset(inputs)
        self.has_entropy = has_entropy
        self.output_names = ["surprisal", "entropy"] if has_entropy else ["surprisal"]

    @classmethod
    def connect(cls, endpoint: TritonEndpoint, *, detector: str = "reference_lm") -> TritonSurprisalBackend:
        """Check readiness and tensor names, start the health checker. Raises TritonError."""
        client = TritonHTTPClient(endpoint, detector=detector)
        try:
            meta = client.connect()
            inputs, outputs = tensor_specs(meta, "inputs"), tensor_specs(meta, "outputs")
            unknown = set(inputs) - {"input_ids", "attention_mask", "position_ids"}
            if "input_ids" not in inputs or unknown:
                raise TritonError(
                    detector,
                    f"Triton {client.target}: inputs {sorted(inputs)}; expected input_ids, attention_mask "
                    "(a prepared surprisal graph: deploy/triton/populate.py)",
                )
            if "surprisal" not in outputs:
                raise TritonError(
                    detector,
                    f"Triton {client.target}: outputs {sorted(outputs)}; expected 'surprisal' "
                    "(and 'entropy'): graphs that output logits are not served remotely",
                )
            for name, spec in {**inputs, **outputs}.items():
                want = "INT64" if name in inputs else "FP32"
                if spec.get("datatype") != want:
                    raise TritonError(
                        detector,
                        f"Triton {client.target}: tensor {name} is {spec.get('datatype')}, not {want}",
                    )
        except BaseException:
            client.close()
            raise
        client.start_monitor()
        return cls(client, list(inputs), "entropy" in outputs)

    @property
    def ready(self) -> bool:
        return self.client.healthy

    def run(self, ids: IntArray, mask: IntArray) -> tuple[FloatArray, FloatArray | None]:
        feed: dict[str, npt.NDArray[Any]] = {"input_ids": ids}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = mask
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy()
        out = self.client.infer(feed, self.output_names)
        expected = (ids.shape[0], ids.shape[1] - 1)
        surprisal = np.asarray(out["surprisal"], dtype=np.float32)
        if surprisal.shape != expected:
            raise TritonError(
                self.client.detector,
                f"Triton {self.client.target}: surprisal shape {surprisal.shape}, expected {expected}",
            )
        entropy = np.asarray(out["entropy"], dtype=np.float32) if self.has_entropy else None
        return surprisal, entropy

    def close(self) -> None:
        self.client.close()


def wait_ready(client: TritonHTTPClient, timeout: float) -> bool:
    """Poll readiness until it holds or ``timeout`` seconds pass (start-up scripts, tests)."""
    deadline = time.monotonic() + timeout
    while client.check_ready() is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
