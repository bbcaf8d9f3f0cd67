"""Regenerate deploy/helm/trigger-firewall/values.schema.json.

The chart's `config` block is validated by the firewall's own config JSON Schema
(`firewall.config.schema.json_schema()`), so `helm lint` / `helm install` reject an invalid config
before it reaches a pod. Run after changing firewall/config/schema.py:

    .venv/bin/python deploy/helm/gen_values_schema.py

tests/deploy fails when the file is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from firewall.config.schema import json_schema

OUT = Path(__file__).parent / "trigger-firewall" / "values.schema.json"

_STR = {"type": "string"}
_OBJ = {"type": "object"}
_BOOL = {"type": "boolean"}
_INT0 = {"type": "integer", "minimum": 0}
_INT1 = {"type": "integer", "minimum": 1}


def _obj(props: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        out["required"] = required
    return out


def build() -> dict[str, Any]:
    cfg = json_schema()
    defs = cfg.pop("$defs", {})
    cfg.pop("$schema", None)
    probe = _obj({"periodSeconds": _INT1, "failureThreshold": _INT1, "timeoutSeconds": _INT1})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "trigger-firewall Helm values",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "global": _OBJ,
            "image": _obj(
                {
                    "repository": {"type": "string", "minLength": 1},
                    "tag": _STR,
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                },
                ["repository"],
            ),
            "nameOverride": _STR,
            "fullnameOverride": _STR,
            "sidecar": _obj(
                {
                    "native": _BOOL,
                    "configMapName": _STR,
                    "resources": _OBJ,
                    "cpuLimit": {"type": ["string", "number"]},
                    "startupProbe": probe,
                    "readinessProbe": probe,
                    "livenessProbe": probe,
                    "terminationMarginSeconds": {"type": "number", "minimum": 0},
                    "extraEnv": {"type": "array", "items": _OBJ},
                    "tmpSizeLimit": _STR,
                }
            ),
            "gateway": _obj(
                {
                    "enabled": _BOOL,
                    "replicas": _INT0,
                    "podAnnotations": _OBJ,
                    "podLabels": _OBJ,
                    "nodeSelector": _OBJ,
                    "tolerations": {"type": "array"},
                    "affinity": _OBJ,
                }
            ),
            "service": _obj(
                {
                    "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                }
            ),
            "config": cfg,
            "serviceMonitor": _obj(
                {"enabled": _BOOL, "labels": _OBJ, "interval": _STR, "scrapeTimeout": _STR}
            ),
            "prometheusRule": _obj(
                {
                    "enabled": _BOOL,
                    "labels": _OBJ,
                    "runbookBaseUrl": _STR,
                    "dashboardBaseUrl": _STR,
                    "rules": {
                        "type": "object",
                        "additionalProperties": _obj(
                            {
                                "enabled": _BOOL,
                                "expr": _STR,
                                "for": _STR,
                                "keep_firing_for": _STR,
                                "labels": _OBJ,
                                "annotations": _OBJ,
                            }
                        ),
                    },
                }
            ),
            "grafanaDashboard": _obj(
                {
                    "enabled": _BOOL,
                    "label": {"type": "string", "minLength": 1},
                    "labelValue": _STR,
                    "annotations": _OBJ,
                    "namespace": _STR,
                }
            ),
        },
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
