"""Unit tests for firewall/screening/policy.py: RoutePolicy.evaluate and compile_policy."""

from __future__ import annotations

from typing import Any

import pytest

from firewall.config.schema import build_config
from firewall.core.types import Action, BlockKind, Cost, Finding, FindingStatus, Mode, Phase
from firewall.screening.policy import DetectorRule, Policy, RoutePolicy, compile_policy

BOTH = frozenset({Phase.INPUT, Phase.OUTPUT})
INPUT_ONLY = frozenset({Phase.INPUT})


def rule(
    name: str,
    threshold: float = 0.5,
    action: Action = Action.BLOCK,
    *,
    fail_closed: bool = False,
    cost: Cost = Cost.CHEAP,
    gate: tuple[str, float] | None = None,
) -> DetectorRule:
    return DetectorRule(
        detector=name,
        threshold=threshold,
        action=action,
        timeout_seconds=0.25,
        fail_closed=fail_closed,
        cost=cost,
        gates=(gate,) if gate is not None else None,
    )


def ok(name: str, score: float) -> Finding:
    return Finding(detector=name, score=score)


def failed(name: str, status: FindingStatus = FindingStatus.ERROR) -> Finding:
    return Finding.failed(name, status, "boom")


def skipped(name: str) -> Finding:
    return Finding(detector=name, score=0.0, status=FindingStatus.SKIPPED)


def route_policy(*rules: DetectorRule, mode: Mode = Mode.ENFORCE, output: bool = True) -> RoutePolicy:
    return RoutePolicy(route="r", mode=mode, input_rules=rules, output_rules=rules if output else ())


# --------------------------------------------------------------------------- evaluate


# (rules, findings, action, reason, fired, fail_open, block_kind)
EVALUATE_CASES: list[tuple[Any, ...]] = [
    ("no findings", (rule("a"),), [], Action.ALLOW, "pass", (), (), None),
    ("below threshold", (rule("a", 0.5),), [ok("a", 0.49)], Action.ALLOW, "pass", (), (), None),
    (
        "at threshold fires",
        (rule("a", 0.5),),
        [ok("a", 0.5)],
        Action.BLOCK,
        "input.a.threshold",
        ("a",),
        (),
        BlockKind.POLICY,
    ),
    (
        "above threshold",
        (rule("a", 0.5),),
        [ok("a", 0.97)],
        Action.BLOCK,
        "input.a.threshold",
        ("a",),
        (),
        BlockKind.POLICY,
    ),
    (
        "threshold 0 fires on score 0",
        (rule("a", 0.0),),
        [ok("a", 0.0)],
        Action.BLOCK,
        "input.a.threshold",
        ("a",),
        (),
        BlockKind.POLICY,
    ),
    (
        "threshold 1 fires only on 1",
        (rule("a", 1.0),),
        [ok("a", 1.0)],
        Action.BLOCK,
        "input.a.threshold",
        ("a",),
        (),
        BlockKind.POLICY,
    ),
    ("threshold 1 not reached", (rule("a", 1.0),), [ok("a", 0.999)], Action.ALLOW, "pass", (), (), None),
    (
        "log action",
        (rule("a", 0.5, Action.LOG),),
        [ok("a", 0.8)],
        Action.LOG,
        "input.a.threshold",
        ("a",),
        (),
        None,
    ),
    (
        "allow action never fires",
        (rule("a", 0.1, Action.ALLOW),),
        [ok("a", 1.0)],
        Action.ALLOW,
        "pass",
        (),
        (),
        None,
    ),
    (
        "strongest wins: block after log",
        (rule("a", 0.5, Action.LOG), rule("b", 0.5)),
        [ok("a", 0.9), ok("b", 0.9)],
        Action.BLOCK,
        "input.b.threshold",
        ("a", "b"),
        (),
        BlockKind.POLICY,
    ),
    (
        "strongest wins: block before log",
        (rule("a", 0.5, Action.LOG), rule("b", 0.5)),
        [ok("b", 0.9), ok("a", 0.9)],
        Action.BLOCK,
        "input.b.threshold",
        ("b", "a"),
        (),
        BlockKind.POLICY,
    ),
    (
        "first of two blocks names the reason",
        (rule("a"), rule("b")),
        [ok("a", 0.6), ok("b", 0.99)],
        Action.BLOCK,
        "input.a.threshold",
        ("a", "b"),
        (),
        BlockKind.POLICY,
    ),
    (
        "one fires, one below",
        (rule("a", 0.5), rule("b", 0.9)),
        [ok("a", 0.7), ok("b", 0.7)],
        Action.BLOCK,
        "input.a.threshold",
        ("a",),
        (),
        BlockKind.POLICY,
    ),
    (
        "error fail open",
        (rule("a"),),
        [failed("a")],
        Action.ALLOW,
        "input.a.fail_open",
        (),
        ("a",),
        None,
    ),
    (
        "timeout fail open",
        (rule("a"),),
        [failed("a", FindingStatus.TIMEOUT)],
        Action.ALLOW,
        "input.a.fail_open",
        (),
        ("a",),
        None,
    ),
    (
        "error fail closed",
        (rule("a", fail_closed=True),),
        [failed("a")],
        Action.BLOCK,
        "input.a.fail_closed",
        (),
        (),
        BlockKind.FAIL_CLOSED,
    ),
    (
        "timeout fail closed",
        (rule("a", fail_closed=True),),
        [failed("a", FindingStatus.TIMEOUT)],
        Action.BLOCK,
        "input.a.fail_closed",
        (),
        (),
        BlockKind.FAIL_CLOSED,
    ),
    (
        "fail closed outranks a log",
        (rule("a", 0.5, Action.LOG), rule("b", fail_closed=True)),
        [ok("a", 0.9), failed("b")],
        Action.BLOCK,
        "input.b.fail_closed",
        ("a",),
        (),
        BlockKind.FAIL_CLOSED,
    ),
    (
        "log plus fail open keeps the log reason",
        (rule("a", 0.5, Action.LOG), rule("b")),
        [ok("a", 0.9), failed("b")],
        Action.LOG,
        "input.a.threshold",
        ("a",),
        ("b",),
        None,
    ),
    (
        "two fail open: first one names the reason",
        (rule("a"), rule("b")),
        [failed("a", FindingStatus.TIMEOUT), failed("b")],
        Action.ALLOW,
        "input.a.fail_open",
        (),
        ("a", "b"),
        None,
    ),
    (
        "skipped findings are ignored",
        (rule("a"),),
        [skipped("a")],
        Action.ALLOW,
        "pass",
        (),
        (),
        None,
    ),
    (
        "findings without a rule are ignored",
        (rule("a"),),
        [ok("zzz", 1.0), failed("yyy")],
        Action.ALLOW,
        "pass",
        (),
        (),
        None,
    ),
    (
        "partial finding over its threshold fires",
        (rule("a"),),
        [Finding("a", 0.9, status=FindingStatus.PARTIAL)],
        Action.BLOCK,
        "input.a.threshold",
        ("a",),
        (),
        BlockKind.POLICY,
    ),
    (
        "partial finding below its threshold takes the fail mode (open)",
        (rule("a"),),
        [Finding("a", 0.1, status=FindingStatus.PARTIAL)],
        Action.ALLOW,
        "input.a.fail_open",
        (),
        ("a",),
        None,
    ),
    (
        "partial finding below its threshold takes the fail mode (closed)",
        (rule("a", fail_closed=True),),
        [Finding("a", 0.1, status=FindingStatus.PARTIAL)],
        Action.BLOCK,
        "input.a.fail_closed",
        (),
        (),
        BlockKind.UNSCREENABLE,
    ),
    (
        "error finding's score is not read",
        (rule("a"),),
        [Finding("a", 0.99, status=FindingStatus.ERROR, error="x")],
        Action.ALLOW,
        "input.a.fail_open",
        (),
        ("a",),
        None,
    ),
]


@pytest.mark.parametrize(
    ("rules", "findings", "action", "reason", "fired", "fail_open", "block_kind"),
    [pytest.param(*case[1:], id=case[0]) for case in EVALUATE_CASES],
)
def test_evaluate_enforce(
    rules: tuple[DetectorRule, ...],
    findings: list[Finding],
    action: Action,
    reason: str,
    fired: tuple[str, ...],
    fail_open: tuple[str, ...],
    block_kind: BlockKind | None,
) -> None:
    verdict = route_policy(*rules).evaluate(Phase.INPUT, findings)
    assert verdict.phase is Phase.INPUT
    assert verdict.mode is Mode.ENFORCE
    assert verdict.action is action
    assert verdict.effective_action is action
    assert verdict.reason == reason
    assert verdict.fired == fired
    assert verdict.fail_open == fail_open
    assert verdict.block_kind is block_kind
    assert verdict.would_block is (action is Action.BLOCK)
    assert verdict.blocks is (action is Action.BLOCK)
    assert verdict.findings == tuple(findings)


def test_fail_closed_and_policy_block_together_block() -> None:
    policy = route_policy(rule("a", fail_closed=True), rule("b"))
    for findings in ([failed("a"), ok("b", 0.9)], [ok("b", 0.9), failed("a")]):
        verdict = policy.evaluate(Phase.INPUT, findings)
        assert verdict.action is Action.BLOCK
        assert verdict.block_kind in (BlockKind.POLICY, BlockKind.FAIL_CLOSED)
        assert verdict.fired == ("b",)


def test_output_phase_reason_prefix() -> None:
    verdict = route_policy(rule("a")).evaluate(Phase.OUTPUT, [ok("a", 0.9)])
    assert verdict.phase is Phase.OUTPUT
    assert verdict.reason == "output.a.threshold"
    verdict = route_policy(rule("a")).evaluate(Phase.OUTPUT, [failed("a")])
    assert verdict.reason == "output.a.fail_open"


def test_evaluate_uses_the_phase_rules_only() -> None:
    policy = RoutePolicy(route="r", mode=Mode.ENFORCE, input_rules=(rule("a"),), output_rules=(rule("b"),))
    assert policy.evaluate(Phase.INPUT, [ok("b", 1.0)]).action is Action.ALLOW
    assert policy.evaluate(Phase.OUTPUT, [ok("a", 1.0)]).action is Action.ALLOW
    assert policy.evaluate(Phase.OUTPUT, [ok("b", 1.0)]).action is Action.BLOCK


@pytest.mark.parametrize(
    ("rules", "findings", "action", "block_kind"),
    [
        ((rule("a"),), [ok("a", 0.9)], Action.BLOCK, BlockKind.POLICY),
        ((rule("a", fail_closed=True),), [failed("a")], Action.BLOCK, BlockKind.FAIL_CLOSED),
        ((rule("a", 0.5, Action.LOG),), [ok("a", 0.9)], Action.LOG, None),
        ((rule("a"),), [ok("a", 0.1)], Action.ALLOW, None),
        ((rule("a"),), [failed("a")], Action.ALLOW, None),
    ],
)
def test_monitor_mode_never_blocks(
    rules: tuple[DetectorRule, ...], findings: list[Finding], action: Action, block_kind: BlockKind | None
) -> None:
    verdict = route_policy(*rules, mode=Mode.MONITOR).evaluate(Phase.INPUT, findings)
    assert verdict.mode is Mode.MONITOR
    assert verdict.action is action
    assert verdict.would_block is (action is Action.BLOCK)
    assert not verdict.blocks
    expected_effective = Action.LOG if action is Action.BLOCK else action
    assert verdict.effective_action is expected_effective
    assert verdict.block_kind is block_kind


def test_mode_off_has_no_rules_and_allows() -> None:
    policy = route_policy(rule("a"), rule("b", fail_closed=True), mode=Mode.OFF)
    for phase in Phase:
        assert policy.rules(phase) == ()
        assert not policy.screens(phase)
        verdict = policy.evaluate(phase, [ok("a", 1.0), failed("b")])
        assert verdict.action is Action.ALLOW
        assert verdict.effective_action is Action.ALLOW
        assert verdict.mode is Mode.OFF
        assert verdict.thresholds == {}


def test_screens_and_rules_per_phase() -> None:
    policy = route_policy(rule("a"), output=False)
    assert policy.screens(Phase.INPUT)
    assert not policy.screens(Phase.OUTPUT)
    assert policy.rules(Phase.INPUT) == (rule("a"),)


def test_verdict_thresholds_and_scores() -> None:
    policy = route_policy(rule("a", 0.3), rule("b", 0.8))
    verdict = policy.evaluate(Phase.INPUT, [ok("a", 0.1), failed("b")])
    assert verdict.thresholds == {"a": 0.3, "b": 0.8}
    assert verdict.scores == {"a": 0.1}


# --------------------------------------------------------------------------- compile_policy


def make_config(data: dict[str, Any]):
    return build_config(data, validate_params=False)


def chat_route(**extra: Any) -> dict[str, Any]:
    return {"name": "chat", "path": "/v1/chat/completions", "protocol": "openai_chat", **extra}


def test_compile_defaults_with_invisible_chars() -> None:
    config = make_config({})
    policy = compile_policy(config, {"invisible_chars": (BOTH, Cost.CHEAP)})
    assert isinstance(policy, Policy)
    assert policy.default_mode is Mode.ENFORCE
    assert {"chat_completions", "completions", "responses", "embeddings", "messages"} < set(policy.routes)
    for name in ("chat_completions", "completions", "responses", "ollama_chat", "tgi_generate"):
        rp = policy.for_route(name)
        assert rp.mode is Mode.ENFORCE
        assert [r.detector for r in rp.input_rules] == ["invisible_chars"]
        assert [r.detector for r in rp.output_rules] == ["invisible_chars"]
    for name in ("embeddings", "ollama_embed", "vllm_pooling"):  # vectors and scores: no output text
        emb = policy.for_route(name)
        assert [r.detector for r in emb.input_rules] == ["invisible_chars"]
        assert emb.output_rules == ()
        assert not emb.screens(Phase.OUTPUT)
    (r,) = policy.for_route("chat_completions").input_rules
    assert r == DetectorRule(
        detector="invisible_chars",
        threshold=0.5,
        action=Action.SANITIZE,
        timeout_seconds=0.25,
        fail_closed=False,
        cost=Cost.CHEAP,
        gates=None,
    )
    with pytest.raises(KeyError):
        policy.for_route("nope")


def test_compile_route_overrides() -> None:
    config = make_config(
        {
            "detectors": [{"name": "a", "threshold": 0.5, "action": "block", "timeout_seconds": 0.1}],
            "routing": {
                "routes": [
                    chat_route(
                        detectors={"a": {"threshold": 0.9, "action": "log", "on_error": "fail_closed"}}
                    ),
                    {"name": "plain", "path": "/v1/completions", "protocol": "openai_completions"},
                ]
            },
        }
    )
    policy = compile_policy(config, {"a": (BOTH, Cost.CHEAP)})
    for rules in (policy.for_route("chat").input_rules, policy.for_route("chat").output_rules):
        (r,) = rules
        assert (r.threshold, r.action, r.fail_closed, r.timeout_seconds) == (0.9, Action.LOG, True, 0.1)
    (r,) = policy.for_route("plain").input_rules
    assert (r.threshold, r.action, r.fail_closed) == (0.5, Action.BLOCK, False)


def test_compile_partial_override_keeps_other_fields() -> None:
    config = make_config(
        {
            "detectors": [{"name": "a", "threshold": 0.4, "action": "log", "on_error": "fail_closed"}],
            "routing": {"routes": [chat_route(detectors={"a": {"threshold": 0.7}})]},
        }
    )
    (r,) = compile_policy(config, {"a": (BOTH, Cost.CHEAP)}).for_route("chat").input_rules
    assert (r.threshold, r.action, r.fail_closed) == (0.7, Action.LOG, True)


@pytest.mark.parametrize(
    ("det_enabled", "override", "present"),
    [
        (True, None, True),
        (True, {"enabled": False}, False),
        (False, None, False),
        (False, {"enabled": True}, True),
        (False, {"threshold": 0.2}, False),
    ],
)
def test_compile_enabled_override(det_enabled: bool, override: dict[str, Any] | None, present: bool) -> None:
    overrides = {"a": override} if override is not None else {}
    config = make_config(
        {
            "detectors": [{"name": "a", "enabled": det_enabled}],
            "routing": {"routes": [chat_route(detectors=overrides)]},
        }
    )
    rp = compile_policy(config, {"a": (BOTH, Cost.CHEAP)}).for_route("chat")
    assert bool(rp.input_rules) is present
    assert bool(rp.output_rules) is present


def test_compile_skips_detectors_without_capabilities() -> None:
    config = make_config({"detectors": [{"name": "a"}, {"name": "b"}], "routing": {"routes": [chat_route()]}})
    rp = compile_policy(config, {"b": (BOTH, Cost.CHEAP)}).for_route("chat")
    assert [r.detector for r in rp.input_rules] == ["b"]


@pytest.mark.parametrize(
    ("phases", "supported", "expect_in", "expect_out"),
    [
        (None, BOTH, True, True),
        (None, INPUT_ONLY, True, False),
        (["input"], BOTH, True, False),
        (["output"], BOTH, False, True),
        (["output"], INPUT_ONLY, False, False),
        (["input", "output"], INPUT_ONLY, True, False),
    ],
)
def test_compile_phases(
    phases: list[str] | None, supported: frozenset[Phase], expect_in: bool, expect_out: bool
) -> None:
    det: dict[str, Any] = {"name": "a"}
    if phases is not None:
        det["phases"] = phases
    config = make_config({"detectors": [det], "routing": {"routes": [chat_route()]}})
    rp = compile_policy(config, {"a": (supported, Cost.CHEAP)}).for_route("chat")
    assert bool(rp.input_rules) is expect_in
    assert bool(rp.output_rules) is expect_out


@pytest.mark.parametrize(
    ("route", "expect_in", "expect_out"),
    [
        (chat_route(), True, True),
        (chat_route(screen_output=False), True, False),
        ({"name": "emb", "path": "/v1/embeddings", "protocol": "openai_embeddings"}, True, False),
        ({"name": "j", "path": "/j", "protocol": "json", "input_fields": ["/text"]}, True, False),
        ({"name": "j", "path": "/j", "protocol": "json", "output_fields": ["/out"]}, False, True),
        (
            {"name": "j", "path": "/j", "protocol": "json", "input_fields": ["/a"], "output_fields": ["/b"]},
            True,
            True,
        ),
        (
            {
                "name": "j",
                "path": "/j",
                "protocol": "json",
                "input_fields": ["/a"],
                "output_fields": ["/b"],
                "screen_output": False,
            },
            True,
            False,
        ),
    ],
)
def test_compile_route_phases(route: dict[str, Any], expect_in: bool, expect_out: bool) -> None:
    config = make_config({"detectors": [{"name": "a"}], "routing": {"routes": [route]}})
    rp = compile_policy(config, {"a": (BOTH, Cost.CHEAP)}).for_route(route["name"])
    assert bool(rp.input_rules) is expect_in
    assert bool(rp.output_rules) is expect_out


@pytest.mark.parametrize(
    ("global_mode", "route_mode", "expected"),
    [
        ("enforce", None, Mode.ENFORCE),
        ("monitor", None, Mode.MONITOR),
        ("enforce", "monitor", Mode.MONITOR),
        ("monitor", "enforce", Mode.ENFORCE),
        ("enforce", "off", Mode.OFF),
    ],
)
def test_compile_route_mode(global_mode: str, route_mode: str | None, expected: Mode) -> None:
    route = chat_route() if route_mode is None else chat_route(mode=route_mode)
    config = make_config({"mode": global_mode, "detectors": [{"name": "a"}], "routing": {"routes": [route]}})
    policy = compile_policy(config, {"a": (BOTH, Cost.CHEAP)})
    rp = policy.for_route("chat")
    assert policy.default_mode is Mode(global_mode)
    assert rp.mode is expected
    assert rp.screens(Phase.INPUT) is (expected is not Mode.OFF)


def test_compile_cascade_order() -> None:
    config = make_config(
        {
            "detectors": [
                {"name": "gated_expensive", "gate": {"detector": "cheap_one", "min_score": 0.3}},
                {"name": "expensive_one"},
                {"name": "gated_cheap", "gate": {"detector": "cheap_one", "min_score": 0.2}},
                {"name": "cheap_one"},
                {"name": "cheap_two"},
            ],
            "routing": {"routes": [chat_route()]},
        }
    )
    caps = {
        "gated_expensive": (BOTH, Cost.EXPENSIVE),
        "expensive_one": (BOTH, Cost.EXPENSIVE),
        "gated_cheap": (BOTH, Cost.CHEAP),
        "cheap_one": (BOTH, Cost.CHEAP),
        "cheap_two": (BOTH, Cost.CHEAP),
    }
    rp = compile_policy(config, caps).for_route("chat")
    for rules in (rp.input_rules, rp.output_rules):
        assert [r.detector for r in rules] == [
            "cheap_one",
            "cheap_two",
            "expensive_one",
            "gated_cheap",
            "gated_expensive",
        ]
        by_name = {r.detector: r for r in rules}
        assert by_name["gated_expensive"].gates == (("cheap_one", 0.3),)
        assert by_name["gated_cheap"].gates == (("cheap_one", 0.2),)
        assert by_name["cheap_one"].gates is None
        assert by_name["expensive_one"].cost is Cost.EXPENSIVE


def test_a_gate_without_min_score_opens_at_each_gate_detectors_threshold_on_the_route() -> None:
    config = make_config(
        {
            "detectors": [
                {"name": "rare", "threshold": 0.69},
                {"name": "tags", "threshold": 0.7},
                {"name": "proof", "gate": {"detector": "rare", "also": ["tags", "absent"]}},
                {"name": "absent", "phases": ["output"]},
            ],
            "routing": {"routes": [{**chat_route(), "detectors": {"tags": {"threshold": 0.9}}}]},
        }
    )
    caps = {name: (BOTH, Cost.CHEAP) for name in ("rare", "tags", "proof", "absent")}
    rules = {r.detector: r for r in compile_policy(config, caps).for_route("chat").input_rules}
    # The route's own threshold for tags; "absent" does not run on input, so it opens nothing.
    assert rules["proof"].gates == (("rare", 0.69), ("tags", 0.9))


def test_compiled_policy_evaluates_with_overrides() -> None:
    config = make_config(
        {
            "detectors": [{"name": "a", "threshold": 0.5}],
            "routing": {
                "routes": [
                    chat_route(detectors={"a": {"threshold": 0.95}}),
                    {"name": "strict", "path": "/s", "protocol": "openai_completions"},
                ]
            },
        }
    )
    policy = compile_policy(config, {"a": (BOTH, Cost.CHEAP)})
    findings = [ok("a", 0.9)]
    assert policy.for_route("chat").evaluate(Phase.INPUT, findings).action is Action.ALLOW
    assert policy.for_route("strict").evaluate(Phase.INPUT, findings).action is Action.BLOCK
    assert policy.for_route("chat").evaluate(Phase.INPUT, findings).thresholds == {"a": 0.95}


# --------------------------------------------------------------------------- sanitize


def remedied(name: str, score: float, remedy: str = "\u200b", residual: float = 0.0) -> Finding:
    return Finding(detector=name, score=score, remedy=remedy, residual=residual)


def test_sanitize_stands_when_the_remedy_clears_the_finding() -> None:
    policy = route_policy(rule("inv", 0.5, Action.SANITIZE), rule("rare", 0.5, Action.LOG))
    verdict = policy.evaluate(Phase.INPUT, [remedied("inv", 0.9), ok("rare", 0.8)])
    assert verdict.action is verdict.effective_action is Action.SANITIZE
    assert verdict.sanitizes
    assert not verdict.blocks
    assert verdict.remedy == "\u200b"
    assert verdict.fired == ("inv", "rare")
    assert verdict.block_kind is None


@pytest.mark.parametrize(
    ("finding", "phase"),
    [
        (remedied("inv", 0.9, remedy=""), Phase.INPUT),  # nothing to remove
        (remedied("inv", 0.9, residual=0.5), Phase.INPUT),  # what is left still fires
        (remedied("inv", 0.9), Phase.OUTPUT),  # answers are not rewritten
    ],
    ids=["no-remedy", "residual-fires", "output"],
)
def test_sanitize_blocks_what_it_cannot_remove(finding: Finding, phase: Phase) -> None:
    verdict = route_policy(rule("inv", 0.5, Action.SANITIZE)).evaluate(phase, [finding])
    assert verdict.action is verdict.effective_action is Action.BLOCK
    assert verdict.block_kind is BlockKind.POLICY
    assert verdict.remedy == ""


def test_block_outranks_sanitize_and_sanitize_outranks_log() -> None:
    rules = (rule("inv", 0.5, Action.SANITIZE), rule("tags", 0.5), rule("rare", 0.5, Action.LOG))
    policy = route_policy(*rules)
    both = policy.evaluate(Phase.INPUT, [remedied("inv", 0.9), ok("tags", 0.9), ok("rare", 0.9)])
    assert both.action is Action.BLOCK
    assert both.remedy == ""
    logged = policy.evaluate(Phase.INPUT, [remedied("inv", 0.9), ok("tags", 0.1), ok("rare", 0.9)])
    assert logged.action is Action.SANITIZE


def test_monitor_mode_logs_a_sanitize_and_changes_nothing() -> None:
    policy = route_policy(rule("inv", 0.5, Action.SANITIZE), mode=Mode.MONITOR)
    verdict = policy.evaluate(Phase.INPUT, [remedied("inv", 0.9)])
    assert verdict.action is Action.SANITIZE
    assert verdict.effective_action is Action.LOG
    assert not verdict.sanitizes
