"""Checks for the deploy artefacts: Dockerfile, Kubernetes manifests, Helm chart, Grafana
dashboard, Prometheus alert rules and runbooks.

External tools come from ``scripts/install-deploy-tools`` (``.tools/bin``, else ``PATH``). A test
skips, naming the tool and the install command, only when its tool is absent; everything else fails.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from firewall.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "trigger-firewall"
DASHBOARD = DEPLOY / "grafana" / "trigger-firewall-overview.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = ROOT / "tests" / "deploy" / "prometheus" / "alerts_test.yaml"
K8S = DEPLOY / "kubernetes"
RUNBOOKS = ROOT / "docs" / "runbooks"
DASHBOARD_UID = "trigger-firewall-overview"
EXPECTED_ALERTS = {
    "TriggerFirewallFailingOpen",
    "TriggerFirewallDetectorNotReady",
    "TriggerFirewallOverheadHigh",
    "TriggerFirewallBlockRateAnomalous",
    "TriggerFirewallDetectorErrors",
    "TriggerFirewallUpstreamErrors",
    "TriggerFirewallConfigReloadFailed",
    "TriggerFirewallRecurringSentence",
    "TriggerFirewallTriggerConfirmed",
    "TriggerFirewallSharedMemoryDown",
    "TriggerFirewallUpstreamModelChanged",
}
TIMEOUT = 120
TMP = "/tmp"  # noqa: S108 - the container's /tmp mount path, not a file this test writes


def _tool(name: str) -> str:
    local = ROOT / ".tools" / "bin" / name
    if local.exists():
        return str(local)
    venv = Path(sys.executable).parent / name
    if venv.exists():
        return str(venv)
    found = shutil.which(name)
    if found is None:
        pytest.skip(
            f"{name} is not installed (run scripts/install-deploy-tools; see its stderr for why it failed)"
        )
    return found


def _run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT, check=False
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# --------------------------------------------------------------------------------------------
# Metric names: registry vs. PromQL


def _registry_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "le", "atan2",
}  # fmt: skip
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, keywords, labels and strings removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables ($__rate_interval, $job)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def test_promql_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (job, le) (rate(trigger_firewall_overhead_seconds_bucket"
        '{job=~"$job", route="a"}[$__rate_interval]))) > 0.05 and on (job) up offset 5m'
    )
    assert promql_metric_names(expr) == {"trigger_firewall_overhead_seconds_bucket", "up"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield panel.get("title", "?"), target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dash["panels"])
    for ann in dash.get("annotations", {}).get("list", []):
        if "expr" in ann:
            yield "annotation " + ann["name"], ann["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", var["definition"])
            assert inner, var["definition"]
            yield "variable " + var["name"], inner.group(1)


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_dashboard_parses_with_stable_uid_and_datasource_variable() -> None:
    dash = _dashboard()
    assert dash["uid"] == DASHBOARD_UID
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids: list[int] = []
    for panel in dash["panels"]:
        ids.append(panel["id"])
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    # no hard-coded datasource uids anywhere
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"


def test_dashboard_covers_the_required_views() -> None:
    exprs = " ".join(e for _, e in _dashboard_exprs(_dashboard()))
    for needle in (
        'action="block"',
        "histogram_quantile(0.5, sum by (phase, le) (rate(trigger_firewall_overhead_seconds_bucket",
        "histogram_quantile(0.99, sum by (phase, le) (rate(trigger_firewall_overhead_seconds_bucket",
        "trigger_firewall_detector_duration_seconds_bucket",
        "trigger_firewall_detector_score_bucket",
        "trigger_firewall_detector_fail_open_total",
        "trigger_firewall_detector_errors_total",
        "trigger_firewall_stream_terminations_total",
        "trigger_firewall_upstream_requests_total",
        "trigger_firewall_config_last_reload_successful",
    ):
        assert needle in exprs, needle
    heatmaps = [p for p in _dashboard()["panels"] if p["type"] == "heatmap"]
    assert {p["repeat"] for p in heatmaps} == {"detector"}
    assert all(t.get("format") == "heatmap" for p in heatmaps for t in p["targets"])


def test_every_dashboard_and_alert_metric_exists_in_the_registry() -> None:
    known = _registry_names()
    used: dict[str, set[str]] = {}
    for where, expr in _dashboard_exprs(_dashboard()):
        for name in promql_metric_names(expr):
            used.setdefault(name, set()).add(f"dashboard: {where}")
    for rule in _alert_rules():
        for name in promql_metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert: {rule['alert']}")
    assert used, "no PromQL found"
    unknown = {name: sorted(where) for name, where in used.items() if name not in known}
    assert not unknown, f"metrics not in firewall.observability.metrics.Metrics' registry: {unknown}"


def test_dashboard_urls_of_alerts_point_at_existing_panels() -> None:
    panel_ids = {p["id"] for p in _dashboard()["panels"]}
    for rule in _alert_rules():
        m = re.search(r"viewPanel=(\d+)", rule["annotations"]["dashboard_url"])
        assert m, rule["alert"]
        assert int(m.group(1)) in panel_ids, rule["alert"]


# --------------------------------------------------------------------------------------------
# Alert rules and runbooks


def test_alert_rules_have_labels_annotations_and_runbooks() -> None:
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == EXPECTED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        for key in ("summary", "description", "runbook_url", "dashboard_url"):
            assert rule["annotations"].get(key), (rule["alert"], key)
        assert rule["annotations"]["runbook_url"].endswith(f"/{rule['alert']}.md")
        runbook = RUNBOOKS / f"{rule['alert']}.md"
        assert runbook.is_file(), runbook
        text = runbook.read_text()
        for section in ("**Meaning.**", "**Impact.**", "**First checks.**", "**Mitigations.**"):
            assert section in text, (runbook.name, section)


def test_every_alert_has_firing_and_quiet_promtool_cases() -> None:
    doc = yaml.safe_load(ALERT_TESTS.read_text())
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_promtool_check_rules() -> None:
    out = _ok(_run(_tool("promtool"), "check", "rules", str(ALERTS)))
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in out


def test_promtool_test_rules() -> None:
    out = _ok(_run(_tool("promtool"), "test", "rules", str(ALERT_TESTS)))
    assert "SUCCESS" in out


# --------------------------------------------------------------------------------------------
# Kubernetes manifests (plain)


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def _pod_specs(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"]


def _firewall_container(spec: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    for c in spec.get("initContainers", []):
        if c["name"] == "trigger-firewall":
            return c, True
    for c in spec["containers"]:
        if c["name"] == "trigger-firewall":
            return c, False
    raise AssertionError("no trigger-firewall container")


def _check_pod(spec: dict[str, Any], config: dict[str, Any], *, native: bool) -> None:
    fw, in_init = _firewall_container(spec)
    assert in_init is native
    assert (fw.get("restartPolicy") == "Always") is native
    server = config["server"]
    need = server["drain_delay_seconds"] + server["shutdown_timeout_seconds"]
    assert spec["terminationGracePeriodSeconds"] >= math.ceil(need) + 5
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    sc = fw["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert isinstance(sc["runAsUser"], int)
    assert fw["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert fw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert fw["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert fw["resources"]["requests"]["memory"] == fw["resources"]["limits"]["memory"]
    mounts = {m["mountPath"]: m for m in fw["volumeMounts"]}
    assert "subPath" not in mounts["/etc/trigger-firewall"], "subPath mounts never receive ConfigMap updates"
    assert TMP in mounts
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "configMap" in volumes[mounts["/etc/trigger-firewall"]["name"]]
    assert "emptyDir" in volumes[mounts[TMP]["name"]]
    for c in spec["containers"] + spec.get("initContainers", []):
        for m in c.get("volumeMounts", []):
            assert "subPath" not in m


def _plain_config() -> dict[str, Any]:
    cm = _docs((K8S / "configmap.yaml").read_text())[0]
    return dict(yaml.safe_load(cm["data"]["config.yaml"]))


def test_plain_manifests_follow_the_sidecar_conventions() -> None:
    config = _plain_config()
    assert config == yaml.safe_load((DEPLOY / "config" / "firewall.yaml").read_text()), (
        "deploy/kubernetes/configmap.yaml must carry deploy/config/firewall.yaml"
    )
    for name, native in (("native-sidecar.yaml", True), ("classic-sidecar.yaml", False)):
        specs = _pod_specs(_docs((K8S / name).read_text()))
        assert len(specs) == 1
        _check_pod(specs[0], config, native=native)


@pytest.mark.parametrize(
    ("files", "versions"),
    [
        (("configmap.yaml", "native-sidecar.yaml"), ("1.29.0", "1.33.0", "1.37.0")),
        (("configmap.yaml", "classic-sidecar.yaml"), ("1.27.0", "1.37.0")),
    ],
)
def test_plain_manifests_validate_against_kubernetes_schemas(
    files: tuple[str, ...], versions: tuple[str, ...]
) -> None:
    kv = _tool("kubernetes-validate")
    for version in versions:
        _ok(_run(kv, "--strict", "--quiet", "-k", version, *(str(K8S / f) for f in files)))


def test_check_config_accepts_the_shipped_configs(tmp_path: Path) -> None:
    # The image runs `trigger-firewall serve` with TRIGGER_FIREWALL_CONFIG=/etc/trigger-firewall/config.yaml,
    # which is deploy/config/firewall.yaml; check-config runs the same validation.
    cli = [sys.executable, "-m", "firewall"]
    out = _ok(_run(*cli, "check-config", str(DEPLOY / "config" / "firewall.yaml")))
    assert ": OK" in out
    rendered = tmp_path / "configmap-config.yaml"
    rendered.write_text(yaml.safe_dump(_plain_config()))
    assert ": OK" in _ok(_run(*cli, "check-config", str(rendered)))


# --------------------------------------------------------------------------------------------
# Helm chart


HELM_VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "everything": [
        "--set", "serviceMonitor.enabled=true",
        "--set", "prometheusRule.enabled=true",
        "--set", "grafanaDashboard.enabled=true",
        "--set", "sidecar.cpuLimit=2",
    ],
    "no-gateway": ["--set", "gateway.enabled=false", "--set", "prometheusRule.enabled=true"],
}  # fmt: skip


def _helm_template(*args: str) -> list[dict[str, Any]]:
    out = _ok(_run(_tool("helm"), "template", "t", str(CHART), "--namespace", "ai", *args))
    return _docs(out)


def test_helm_lint() -> None:
    helm = _tool("helm")
    _ok(_run(helm, "lint", "--strict", str(CHART)))
    _ok(_run(helm, "lint", "--strict", str(CHART), *HELM_VALUE_SETS["everything"]))


def test_helm_values_schema_rejects_an_invalid_firewall_config() -> None:
    proc = _run(_tool("helm"), "lint", str(CHART), "--set", "config.mode=bogus")
    assert proc.returncode != 0
    assert "/config/mode" in proc.stdout + proc.stderr


@pytest.mark.parametrize("value_set", sorted(HELM_VALUE_SETS))
def test_helm_template_validates_strictly(value_set: str) -> None:
    helm, kv = _tool("helm"), _tool("kubernetes-validate")
    out = _ok(_run(helm, "template", "t", str(CHART), "--namespace", "ai", *HELM_VALUE_SETS[value_set]))
    for version in ("1.29.0", "1.37.0"):
        proc = _run(kv, "--strict", "-k", version, "-", stdin=out)
        _ok(proc)
        assert "ERROR" not in proc.stdout + proc.stderr


def test_helm_gateway_pod_follows_the_sidecar_conventions() -> None:
    docs = _helm_template(*HELM_VALUE_SETS["everything"])
    kinds = {d["kind"] for d in docs}
    assert {"ConfigMap", "Deployment", "Service", "ServiceMonitor", "PrometheusRule"} <= kinds
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d["data"])
    config = yaml.safe_load(cm["data"]["config.yaml"])
    assert config == yaml.safe_load((DEPLOY / "config" / "firewall.yaml").read_text())
    (spec,) = _pod_specs(docs)
    _check_pod(spec, config, native=False)
    fw, _ = _firewall_container(spec)
    assert fw["resources"]["limits"]["cpu"] == 2


def test_helm_sidecar_helper_renders_a_native_sidecar(tmp_path: Path) -> None:
    # The helper, included the way a parent chart would, with sidecar.native at its default (true).
    helm = _tool("helm")
    template = (
        '{{- $c := dict "Values" .Values "configMapName" "cm" "appVersion" "9.9.9" }}\n'
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n"
        "  terminationGracePeriodSeconds: "
        '{{ include "trigger-firewall.terminationGracePeriodSeconds" $c }}\n'
        '  securityContext: {{- include "trigger-firewall.podSecurityContext" . | nindent 4 }}\n'
        '  initContainers: {{- include "trigger-firewall.sidecar.container" $c | nindent 4 }}\n'
        "  containers:\n    - name: app\n      image: app:1\n"
        '  volumes: {{- include "trigger-firewall.sidecar.volumes" $c | nindent 4 }}\n'
    )
    work = Path(shutil.copytree(CHART, tmp_path / "trigger-firewall"))
    (work / "templates" / "zz-pod.yaml").write_text(template)
    out = _ok(_run(helm, "template", "t", str(work), "--show-only", "templates/zz-pod.yaml"))
    (pod,) = _docs(out)
    spec = pod["spec"]
    _check_pod(spec, yaml.safe_load((DEPLOY / "config" / "firewall.yaml").read_text()), native=True)
    assert spec["initContainers"][0]["image"] == "ghcr.io/example/trigger-firewall:9.9.9"
    _ok(_run(_tool("kubernetes-validate"), "--strict", "-k", "1.33.0", "-", stdin=out))


def test_helm_prometheusrule_carries_the_plain_rules() -> None:
    docs = _helm_template("--set", "prometheusRule.enabled=true")
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    docs = _helm_template(
        "--set", "prometheusRule.enabled=true",
        "--set", "prometheusRule.runbookBaseUrl=https://wiki.example/rb/",
        "--set", "prometheusRule.rules.TriggerFirewallBlockRateAnomalous.enabled=false",
        "--set", "prometheusRule.rules.TriggerFirewallOverheadHigh.for=30m",
    )  # fmt: skip
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    rules = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "TriggerFirewallBlockRateAnomalous" not in rules
    assert rules["TriggerFirewallOverheadHigh"]["for"] == "30m"
    assert rules["TriggerFirewallFailingOpen"]["annotations"]["runbook_url"] == (
        "https://wiki.example/rb/TriggerFirewallFailingOpen.md"
    )


def test_helm_dashboard_configmap_is_labelled_for_the_grafana_sidecar() -> None:
    docs = _helm_template(
        "--set", "grafanaDashboard.enabled=true", "--set", "grafanaDashboard.label=my_dash",
    )  # fmt: skip
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and "trigger-firewall-overview.json" in d["data"]]
    assert cm["metadata"]["labels"]["my_dash"] == "1"
    assert json.loads(cm["data"]["trigger-firewall-overview.json"]) == _dashboard()


def test_chart_copies_and_schema_are_in_sync() -> None:
    assert (CHART / "files" / "alerts.yaml").read_bytes() == ALERTS.read_bytes(), (
        "cp deploy/prometheus/alerts.yaml deploy/helm/trigger-firewall/files/alerts.yaml"
    )
    assert (CHART / "dashboards" / DASHBOARD.name).read_bytes() == DASHBOARD.read_bytes(), (
        f"cp {DASHBOARD.relative_to(ROOT)} deploy/helm/trigger-firewall/dashboards/"
    )
    sys.path.insert(0, str(DEPLOY / "helm"))
    try:
        import gen_values_schema
    finally:
        sys.path.pop(0)
    assert (CHART / "values.schema.json").read_text() == gen_values_schema.render(), (
        "stale: run .venv/bin/python deploy/helm/gen_values_schema.py"
    )
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    from firewall import __version__

    assert chart["appVersion"] == __version__


# --------------------------------------------------------------------------------------------
# Dockerfile


def test_hadolint() -> None:
    _ok(_run(_tool("hadolint"), "--failure-threshold", "info", str(ROOT / "Dockerfile")))


def test_dockerfile_conventions() -> None:
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)
    names = [name for _, name in stages]
    assert names[-1] == "cpu", "the last stage is the default build target"
    assert "cuda" in names
    blocks = re.split(r"^FROM\s", text, flags=re.M)[1:]
    by_stage = {b.split()[2]: b for b in blocks}
    for final in ("cpu", "cuda", "cpu-model"):
        block = by_stage[final]
        if final != "cuda":
            block = by_stage["runtime-base"] + block
        assert re.search(r"^USER\s+\d+:\d+\s*$", block, re.M), f"{final}: numeric USER"
        assert re.search(r'^ENTRYPOINT\s+\["trigger-firewall",\s*"serve"\]', block, re.M), final
        assert "HEALTHCHECK" in block, final
        assert "org.opencontainers.image.source" in block, final
        assert not re.search(r"\b(gcc|g\+\+|build-essential|clang)\b", block), f"{final}: no compilers"
    # never both onnxruntime packages in one image
    cpu_installs = re.findall(r"pip install (\S+)", by_stage["venv-cpu"])
    cuda_installs = re.findall(r"pip install (\S+)", by_stage["cuda"])
    # shared: Redis for the detectors' shared memory; signing: signed model manifests.
    assert cpu_installs == ['".[cpu,shared,signing]"'], cpu_installs
    assert cuda_installs == ['"/src[gpu,shared,signing]"'], cuda_installs
