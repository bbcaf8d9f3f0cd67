"""The policy: compiled from config, turns findings into a verdict. Pure and synchronous.

Thresholds, actions and fail modes live here and nowhere else, so a security
team tunes one place. Compilation resolves per-route overrides once, at config
load, so the hot path only walks a short tuple of :class:`DetectorRule`.

Decision rule (any-fires):

* a finding with ``status=ok`` and ``score >= threshold`` *fires* and asks for the
  detector's action (``block``, ``sanitize`` or ``log``); ``sanitize`` stands only on
  the input phase, for a finding whose remedy leaves it below the threshold, and
  asks for ``block`` otherwise;
* a detector that errored or timed out blocks when it is ``fail_closed`` (the
  proxy answers 503: a transient failure, safe for clients to retry) and is
  recorded as *failed open* otherwise (the request goes through, is marked
  upstream with ``x-firewall-fail-open`` and counted);
* the strongest action wins (block > sanitize > log > allow); the route's mode
  then maps it: ``monitor`` turns a block or a sanitize into a log (shadow mode:
  nothing is changed), ``enforce`` keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from firewall.config.schema import DetectorOverride, FirewallConfig, GateConfig, RouteConfig
from firewall.core.types import Action, BlockKind, Cost, Finding, FindingStatus, Mode, Phase, Verdict
from firewall.protocols import adapter_for

__all__ = ["DetectorRule", "Policy", "RoutePolicy", "compile_policy", "removable"]

#: Findings that leave the question open: the rule's fail mode answers it (a partial
#: finding below its threshold did not read everything).
_UNDECIDED = frozenset({FindingStatus.ERROR, FindingStatus.TIMEOUT, FindingStatus.PARTIAL})

_RANK = {Action.ALLOW: 0, Action.LOG: 1, Action.SANITIZE: 2, Action.BLOCK: 3}

# Members read on every request, bound once: on Python 3.11 ``Enum.MEMBER`` goes through
# EnumType's __getattr__ hook, about ten times the cost of reading a module global.
_OK, _PARTIAL = FindingStatus.OK, FindingStatus.PARTIAL
_ALLOW, _LOG, _SANITIZE, _BLOCK = Action.ALLOW, Action.LOG, Action.SANITIZE, Action.BLOCK
_OFF, _ENFORCE, _INPUT = Mode.OFF, Mode.ENFORCE, Phase.INPUT


@dataclass(frozen=True, slots=True)
class DetectorRule:
    """One detector's policy on one route and phase, overrides already applied."""

    detector: str
    threshold: float
    action: Action
    timeout_seconds: float
    fail_closed: bool
    cost: Cost
    #: The detectors whose finding opens this rule's gate (any one of them), each with the
    #: score that opens it, resolved when the policy is compiled: the gate's ``min_score``, or
    #: that detector's own threshold on the route. Only gate detectors that run on the route
    #: are listed. ``None``: not gated.
    gates: tuple[tuple[str, float], ...] | None = None
    allowlist: tuple[re.Pattern[str], ...] = ()


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """The compiled policy of one route: its mode and the ordered rules per phase.

    Rules are ordered for the cascade: ungated cheap detectors, then ungated
    expensive ones, then gated detectors (which run only after their gate scored).
    """

    route: str
    mode: Mode
    input_rules: tuple[DetectorRule, ...]
    output_rules: tuple[DetectorRule, ...]
    models: Mapping[str, RoutePolicy] = field(default_factory=dict, compare=False)
    # Lookups derived once from the rules, so evaluate() builds no dicts per request.
    _index: dict[Phase, dict[str, DetectorRule]] = field(init=False, repr=False, compare=False)
    _thresholds: dict[Phase, Mapping[str, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {
            Phase.INPUT: {r.detector: r for r in self.input_rules},
            Phase.OUTPUT: {r.detector: r for r in self.output_rules},
        }
        object.__setattr__(self, "_index", index)
        thresholds = {
            p: MappingProxyType({n: r.threshold for n, r in rules.items()}) for p, rules in index.items()
        }
        object.__setattr__(self, "_thresholds", thresholds)

    def rules(self, phase: Phase) -> tuple[DetectorRule, ...]:
        if self.mode is _OFF:
            return ()
        return self.input_rules if phase is _INPUT else self.output_rules

    def screens(self, phase: Phase) -> bool:
        return bool(self.rules(phase))

    def evaluate(self, phase: Phase, findings: Sequence[Finding]) -> Verdict:
        """Apply thresholds, fail modes and the route's mode to one phase's findings."""
        rules = self._index[phase] if self.mode is not _OFF else {}
        action = _ALLOW
        reason = "pass"
        block_kind: BlockKind | None = None
        fired: list[str] = []
        fail_open: list[str] = []
        remedy = ""
        for finding in findings:
            rule = rules.get(finding.detector)
            if rule is None:
                continue
            status = finding.status
            over = finding.score >= rule.threshold
            if status is _OK or (status is _PARTIAL and over):
                if over and rule.action is not _ALLOW:
                    fired.append(finding.detector)
                    wanted = rule.action
                    if wanted is _SANITIZE:
                        if removable(phase, finding, rule.threshold):
                            remedy += finding.remedy
                        else:
                            wanted = _BLOCK
                    if _RANK[wanted] > _RANK[action]:
                        action = wanted
                        reason = f"{phase.value}.{finding.detector}.threshold"
                        block_kind = BlockKind.POLICY if action is _BLOCK else None
            elif status in _UNDECIDED:
                if rule.fail_closed:
                    if action is not _BLOCK:
                        action = _BLOCK
                        reason = f"{phase.value}.{finding.detector}.fail_closed"
                        block_kind = BlockKind.UNSCREENABLE if status is _PARTIAL else BlockKind.FAIL_CLOSED
                else:
                    fail_open.append(finding.detector)
        if action is _ALLOW and fail_open:
            reason = f"{phase.value}.{fail_open[0]}.fail_open"
        effective = action
        if self.mode is not _ENFORCE and action in _CHANGES:
            effective = _LOG
        return Verdict(
            phase=phase,
            mode=self.mode,
            action=action,
            effective_action=effective,
            reason=reason,
            findings=tuple(findings),
            fired=tuple(fired),
            fail_open=tuple(fail_open),
            block_kind=block_kind,
            thresholds=self._thresholds[phase] if rules else {},
            remedy="".join(sorted(set(remedy))) if action is _SANITIZE else "",
        )


#: Actions that change what passes; a route in shadow mode logs them instead.
_CHANGES = frozenset({Action.BLOCK, Action.SANITIZE})


def removable(phase: Phase, finding: Finding, threshold: float) -> bool:
    """Whether removing ``finding``'s remedy clears it: only requests are rewritten."""
    return phase is Phase.INPUT and bool(finding.remedy) and finding.residual < threshold


@dataclass(frozen=True, slots=True)
class Policy:
    """All route policies, keyed by route name, plus the one for unmatched routes."""

    routes: Mapping[str, RoutePolicy]
    default_mode: Mode

    def for_route(self, route: str) -> RoutePolicy:
        return self.routes[route]


def _order(rules: Iterable[DetectorRule]) -> tuple[DetectorRule, ...]:
    def key(rule: DetectorRule) -> tuple[int, int]:
        return (1 if rule.gates is not None else 0, 0 if rule.cost is Cost.CHEAP else 1)

    return tuple(sorted(rules, key=key))


def _merged(base: DetectorOverride | None, top: DetectorOverride | None) -> DetectorOverride | None:
    """A model's override on top of its route's: fields the model sets win."""
    if base is None or top is None:
        return top or base
    return base.model_copy(update=top.model_dump(exclude_none=True))


def _route_policy(
    config: FirewallConfig,
    route: RouteConfig,
    capabilities: Mapping[str, tuple[frozenset[Phase], Cost]],
    model: str | None = None,
) -> RoutePolicy:
    adapter = adapter_for(route)  # what the route's protocol can carry decides its phases
    per_phase: dict[Phase, list[DetectorRule]] = {Phase.INPUT: [], Phase.OUTPUT: []}
    gate_specs: dict[str, GateConfig] = {}
    model_override = route.models.get(model) if model is not None else None
    for det in config.detectors:
        override = _merged(
            route.detectors.get(det.name),
            model_override.detectors.get(det.name) if model_override is not None else None,
        )
        enabled = det.enabled if override is None or override.enabled is None else override.enabled
        if not enabled or det.name not in capabilities:
            continue
        supported, cost = capabilities[det.name]
        phases = set(det.phases) if det.phases is not None else set(supported)
        phases &= supported
        if not route.screen_output:
            phases.discard(Phase.OUTPUT)
        phases = {p for p in phases if adapter.screens(p)}
        on_error = det.on_error if override is None or override.on_error is None else override.on_error
        rule = DetectorRule(
            detector=det.name,
            threshold=(
                det.threshold if override is None or override.threshold is None else override.threshold
            ),
            action=det.action if override is None or override.action is None else override.action,
            timeout_seconds=det.timeout_seconds,
            fail_closed=on_error == "fail_closed",
            cost=cost,
            allowlist=tuple(re.compile(p) for p in det.allowlist),
        )
        if det.gate is not None:
            gate_specs[det.name] = det.gate
        for phase in phases:
            per_phase[phase].append(rule)
    for phase, rules in per_phase.items():
        per_phase[phase] = _with_gates(rules, gate_specs)
    mode = route.mode if route.mode is not None else config.mode
    if model_override is not None and model_override.mode is not None:
        mode = model_override.mode
    models = {}
    if model is None:
        models = {name: _route_policy(config, route, capabilities, name) for name in route.models}
    return RoutePolicy(
        route=route.name,
        mode=mode,
        input_rules=_order(per_phase[Phase.INPUT]),
        output_rules=_order(per_phase[Phase.OUTPUT]),
        models=models,
    )


def compile_policy(
    config: FirewallConfig, capabilities: Mapping[str, tuple[frozenset[Phase], Cost]]
) -> Policy:
    """Compile config into a :class:`Policy`.

    ``capabilities`` maps each live detector's name to the phases it supports and
    its cost class (read from the detector classes, which the policy must not
    import itself, to stay pure and cheap to test).
    """
    routes = {r.name: _route_policy(config, r, capabilities) for r in config.routing.routes}
    return Policy(routes=routes, default_mode=config.mode)


def _with_gates(rules: list[DetectorRule], specs: Mapping[str, GateConfig]) -> list[DetectorRule]:
    """``rules`` with each gated rule's gates resolved against the phase's own rules."""
    if not specs:
        return rules
    thresholds = {r.detector: r.threshold for r in rules}
    out = []
    for rule in rules:
        spec = specs.get(rule.detector)
        if spec is not None:
            gates = tuple(
                (name, spec.min_score if spec.min_score is not None else thresholds[name])
                for name in (spec.detector, *spec.also)
                if name in thresholds
            )
            rule = replace(rule, gates=gates)
        out.append(rule)
    return out
