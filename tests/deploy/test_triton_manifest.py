"""The Triton Deployment example: valid against the Kubernetes schemas, and wired the way the
detectors' remote backend and the model repository expect (ports, v2 health probes, GPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy_artifacts import K8S, _ok, _run, _tool

MANIFEST = K8S / "triton-deployment.yaml"
REPOSITORY = Path(__file__).resolve().parents[2] / "deploy" / "triton" / "model_repository"


def _docs() -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in yaml.safe_load_all(MANIFEST.read_text()) if d}


@pytest.mark.parametrize("version", ["1.29.0", "1.37.0"])
def test_triton_manifest_validates_against_kubernetes_schemas(version: str) -> None:
    _ok(_run(_tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, str(MANIFEST)))


def test_triton_deployment_serves_the_repository_on_a_gpu_with_v2_health_probes() -> None:
    docs = _docs()
    assert set(docs) == {"Deployment", "Service", "PersistentVolumeClaim"}
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    (triton,) = spec["containers"]
    args = triton["args"]
    assert args[0] == "tritonserver"
    assert "--model-repository=/models" in args
    assert "--strict-readiness=true" in args, "ready only once every model is loaded"
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    for probe in ("startupProbe", "readinessProbe"):
        assert triton[probe]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert triton["resources"]["requests"]["memory"] == triton["resources"]["limits"]["memory"]
    sc = triton["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"]: m for m in triton["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    claim = volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    service = docs["Service"]["spec"]
    assert service["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {p["name"]: p["port"] for p in service["ports"]} == ports
    # The example's comment shows a sidecar config: it must name a model the repository has.
    models = {p.parent.name for p in REPOSITORY.glob("*/config.pbtxt")}
    assert "model_name: strip_classifier" in MANIFEST.read_text()
    assert "strip_classifier" in models
