"""Serve a populated Triton model repository on a machine without a GPU, for tests and demos.

Production runs NVIDIA's Triton container with the onnxruntime backend on a GPU
(``deploy/kubernetes/triton-deployment.yaml``). Where that is not available, PyPI's
``nvidia-pytriton`` (``pip install 'trigger-firewall[triton]'``) bundles a real
``tritonserver`` (2.51) that runs on a CPU, but with the Python backend only. So this script
reads the same repository (``deploy/triton/populate.py`` fills it), and binds each model's
``model.onnx`` as a Python function that calls onnxruntime, under the model name, tensor
names, ``max_batch_size`` and ``dynamic_batching`` settings its ``config.pbtxt`` gives.
Clients see the same KServe v2 HTTP/gRPC API, metadata and batching as on the GPU server;
only the execution differs (onnxruntime on CPU inside the Python process, ~3 ms a call extra).

Requests of different shapes (the reference model's padded lengths) are never concatenated:
each batch Triton hands over is grouped by shape and each group runs as one onnxruntime call.

``--check-configs`` only parses every ``config.pbtxt`` with Triton's own protobuf schema
(``tritonclient``'s ``model_config_pb2``) and prints it as JSON: the tests check the committed
GPU configs this way.

``--delay-file FILE``: seconds to wait before each inference, re-read at every call, so a
test or a demo can make the server slow at run time (timeouts, fail-open).

Pitfall handled here: the Python-backend stub links the system libpython, so
``LD_LIBRARY_PATH`` must hold this interpreter's ``LIBDIR`` before Triton starts (else models
fail to load with an RLock error).

pytriton 0.7 needs ``numpy<2``: run this with the interpreter of its own environment
(``scripts/install-deploy-tools`` builds ``.tools/triton-venv``), not the firewall's.

Usage::

    .tools/triton-venv/bin/python deploy/triton/pytriton_server.py --model-repository DIR [--http-port 8000]
        [--grpc-port 8001] [--metrics-port 8002] [--host 127.0.0.1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["describe_configs", "load_repository", "main", "parse_config"]

log = logging.getLogger("pytriton_server")

_NUMPY = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
}


def _libpython_on_path() -> None:
    libdir = sysconfig.get_config_var("LIBDIR")
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(os.pathsep):
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, current) if p)


def parse_config(path: Path) -> Any:
    """A ``config.pbtxt`` parsed as Triton's own ``ModelConfig`` protobuf (unknown fields fail)."""
    from google.protobuf import text_format  # type: ignore[import-untyped]
    from tritonclient.grpc import model_config_pb2  # type: ignore[import-untyped]

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def describe_configs(repository: Path) -> list[dict[str, Any]]:
    """Every model config in ``repository`` as plain data (``--check-configs``), enums by name."""
    from google.protobuf import json_format  # type: ignore[import-untyped]

    out = []
    for path in sorted(repository.glob("*/config.pbtxt")):
        data = json_format.MessageToDict(parse_config(path), preserving_proto_field_name=True)
        data["folder"] = path.parent.name
        out.append(data)
    return out


def load_repository(repository: Path) -> list[tuple[Any, Path]]:
    """(parsed ModelConfig, newest ``N/model.onnx``) for every model folder in ``repository``."""
    models = []
    for folder in sorted(p for p in repository.iterdir() if (p / "config.pbtxt").is_file()):
        config = parse_config(folder / "config.pbtxt")
        versions = sorted((int(v.name), v) for v in folder.iterdir() if v.name.isdigit())
        if not versions or not (versions[-1][1] / "model.onnx").is_file():
            raise FileNotFoundError(
                f"{folder}: no <version>/model.onnx (fill it with deploy/triton/populate.py)"
            )
        models.append((config, versions[-1][1] / "model.onnx"))
    if not models:
        raise FileNotFoundError(f"{repository}: no model folders with a config.pbtxt")
    return models


def _read_delay(path: Path | None) -> float:
    if path is None:
        return 0.0
    try:
        return max(0.0, float(path.read_text().strip() or 0))
    except (OSError, ValueError):
        return 0.0


def _infer_function(
    config: Any, onnx_path: Path, threads: int, delay_file: Path | None
) -> Callable[[list[Any]], list[dict[str, npt.NDArray[Any]]]]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    inputs = [i.name for i in config.input]
    outputs = [o.name for o in config.output]
    lock = threading.Lock()

    def infer(requests: list[Any]) -> list[dict[str, npt.NDArray[Any]]]:
        delay = _read_delay(delay_file)
        if delay:
            time.sleep(delay)
        groups: dict[tuple[tuple[int, ...], ...], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(tuple(request[name].shape[1:] for name in inputs), []).append(index)
        results: list[dict[str, npt.NDArray[Any]]] = [{} for _ in requests]
        for members in groups.values():
            feed = {name: np.concatenate([requests[i][name] for i in members]) for name in inputs}
            with lock:
                values = session.run(outputs, feed)
            start = 0
            for i in members:
                rows = requests[i][inputs[0]].shape[0]
                results[i] = {
                    name: value[start : start + rows] for name, value in zip(outputs, values, strict=True)
                }
                start += rows
        return results

    return infer


def _bind(triton: Any, config: Any, onnx_path: Path, threads: int, delay_file: Path | None) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor  # type: ignore[import-untyped]
    from tritonclient.grpc import model_config_pb2

    def tensors(specs: Sequence[Any]) -> list[Any]:
        return [
            Tensor(
                name=s.name,
                dtype=_NUMPY[model_config_pb2.DataType.Name(s.data_type)],
                shape=tuple(int(d) for d in s.dims),
            )
            for s in specs
        ]

    batching = config.max_batch_size > 0
    batcher = DynamicBatcher()
    if config.HasField("dynamic_batching"):
        db = config.dynamic_batching
        batcher = DynamicBatcher(
            max_queue_delay_microseconds=int(db.max_queue_delay_microseconds),
            preferred_batch_size=list(db.preferred_batch_size) or None,
        )
    triton.bind(
        model_name=config.name,
        infer_func=_infer_function(config, onnx_path, threads, delay_file),
        inputs=tensors(config.input),
        outputs=tensors(config.output),
        config=ModelConfig(batching=batching, max_batch_size=max(config.max_batch_size, 1), batcher=batcher),
        strict=False,
    )
    log.info("bound %s <- %s (max_batch_size %d)", config.name, onnx_path, config.max_batch_size)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a Triton model repository on CPU with PyTriton.")
    parser.add_argument("--model-repository", required=True, type=Path)
    parser.add_argument("--host", default="127.0.0.1", help="listen address for HTTP and gRPC")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per model")
    parser.add_argument("--delay-file", type=Path, help="file with seconds to wait before each inference")
    parser.add_argument(
        "--check-configs",
        action="store_true",
        help="only parse every config.pbtxt as Triton's ModelConfig and print them as JSON",
    )
    parser.add_argument(
        "--exit-timeout",
        type=int,
        default=30,
        help="seconds Triton waits for open client connections on stop",
    )
    args = parser.parse_args(argv)
    if args.check_configs:
        print(json.dumps(describe_configs(args.model_repository), indent=1))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    _libpython_on_path()

    from pytriton.triton import Triton, TritonConfig  # type: ignore[import-untyped]

    models = load_repository(args.model_repository)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    config = TritonConfig(
        http_address=args.host,
        http_port=args.http_port,
        grpc_address=args.host,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        log_verbose=0,
        exit_timeout_secs=args.exit_timeout,
    )
    with Triton(config=config) as triton:
        for model_config, onnx_path in models:
            _bind(triton, model_config, onnx_path, args.threads, args.delay_file)
        triton.run()
        print(f"serving {len(models)} model(s) on http://{args.host}:{args.http_port}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
