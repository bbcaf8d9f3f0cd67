"""The Runtime: one immutable snapshot of config, policy, routes and live detectors.

The proxy reads ``app[RUNTIME]`` once at the start of each request, so a request
always finishes under the config it started with, even if a reload swaps in a
new runtime meanwhile. Building a runtime constructs detectors (validating their
params) but loads nothing; :meth:`Runtime.start` loads and warms them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from detectors import load_detector_class
from detectors.base import Detector
from firewall.config.schema import DetectorConfig, FirewallConfig, RouteConfig, config_hash
from firewall.core.detector_context import ContextAware, DetectorContext
from firewall.core.types import Cost, Phase
from firewall.observability.metrics import Metrics
from firewall.protocols import ProtocolAdapter, adapter_for
from firewall.screening.pipeline import Pipeline
from firewall.screening.policy import Policy, RoutePolicy, compile_policy

__all__ = ["MatchedRoute", "RouteTable", "Runtime", "build_runtime"]

log = logging.getLogger("trigger_firewall.runtime")

_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class MatchedRoute:
    """A configured route with its adapter and compiled policy.

    ``models`` holds the same route under each per-model override's policy, built
    once at config load, so resolving a request's model allocates nothing.
    """

    config: RouteConfig
    adapter: ProtocolAdapter
    policy: RoutePolicy
    models: Mapping[str, MatchedRoute] = field(default_factory=dict, compare=False, repr=False)
    # The config fields every request reads, copied out once: a pydantic model's field read
    # goes through BaseModel's __getattr__ hook, many times the cost of a slot.
    name: str = field(init=False, compare=False, repr=False)
    methods: tuple[str, ...] = field(init=False, compare=False, repr=False)
    roles: tuple[str, ...] | None = field(init=False, compare=False, repr=False)
    allowed_models: tuple[str, ...] | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        config = self.config
        object.__setattr__(self, "name", config.name)
        object.__setattr__(self, "methods", config.methods)
        object.__setattr__(self, "roles", config.roles)
        object.__setattr__(self, "allowed_models", config.allowed_models)

    def for_model(self, model: str | None) -> MatchedRoute:
        """This route as it applies to requests for ``model`` (itself when no override names it)."""
        if model is None or not self.models:
            return self
        return self.models.get(model, self)


def _matched(config: RouteConfig, adapter: ProtocolAdapter, policy: RoutePolicy) -> MatchedRoute:
    models = {name: MatchedRoute(config, adapter, p) for name, p in policy.models.items()}
    return MatchedRoute(config, adapter, policy, models)


class RouteTable:
    """Maps a request path and method to its screened route (exact paths first)."""

    def __init__(self, routes: Mapping[str, MatchedRoute]) -> None:
        self._by_name = dict(routes)
        self._exact: dict[str, list[MatchedRoute]] = {}
        self._templated: list[tuple[re.Pattern[str], MatchedRoute]] = []
        for matched in routes.values():
            for path in (matched.config.path, *matched.config.aliases):
                if _PARAM.search(path):
                    pattern = _PARAM.sub(r"[^/]+", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))
                    # \Z, not $: "$" also matches before a final line feed.
                    self._templated.append((re.compile(f"^{pattern}\\Z"), matched))
                else:
                    self._exact.setdefault(path.rstrip("/") or "/", []).append(matched)

    def by_name(self, name: str) -> MatchedRoute:
        return self._by_name[name]

    def names(self) -> list[str]:
        return list(self._by_name)

    def match(self, method: str, path: str) -> MatchedRoute | None:
        for matched in self._exact.get(path.rstrip("/") or "/", ()):
            if method in matched.methods:
                return matched
        for pattern, matched in self._templated:
            if method in matched.methods and pattern.match(path):
                return matched
        return None


class Users:
    """How many requests are running under one runtime, so a reload knows when
    the detectors only the old runtime had can be closed safely."""

    __slots__ = ("_idle", "count")

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


@dataclass(frozen=True, slots=True)
class Runtime:
    """A live configuration: everything a request needs, swapped as one reference."""

    config: FirewallConfig
    config_hash: str
    policy: Policy
    detectors: Mapping[str, Detector[Any]]
    routes: RouteTable
    pipeline: Pipeline
    reused: frozenset[str] = frozenset()
    users: Users = field(default_factory=Users, compare=False, repr=False)
    #: Handed to detectors that define ``bind_context`` (see :mod:`firewall.core.detector_context`).
    context: DetectorContext | None = field(default=None, compare=False, repr=False)

    @property
    def ready(self) -> bool:
        """True when every detector marked ``required`` is ready."""
        return all(
            self.detectors[d.name].ready
            for d in self.config.detectors
            if d.enabled and d.required and d.name in self.detectors
        )

    async def start(self, metrics: Metrics | None = None) -> None:
        """Load every detector not carried over from a previous runtime.

        A failure is logged and leaves that detector not ready.
        """

        async def start_one(name: str, det: Detector[Any]) -> None:
            try:
                det.metrics = metrics
                if self.context is not None and isinstance(det, ContextAware):
                    det.bind_context(self.context)
                await det.start()
            except Exception:
                log.exception("detector %s failed to start", name)
            if metrics is not None:
                metrics.detector_ready.labels(name).set(1 if det.ready else 0)

        await asyncio.gather(*(start_one(n, d) for n, d in self.detectors.items() if n not in self.reused))

    async def close(self, keep: Mapping[str, Detector[Any]] | None = None) -> None:
        """Close the detectors, except those (by identity) that a newer runtime still uses."""
        kept = {id(d) for d in (keep or {}).values()}
        for name, det in self.detectors.items():
            if id(det) in kept:
                continue
            try:
                await det.close()
            except Exception:
                log.exception("detector %s failed to close", name)


def _identity(det: DetectorConfig) -> tuple[str, str, bytes]:
    """What makes two configured detectors the same loaded instance (policy aside)."""
    return (det.name, det.kind, orjson.dumps(det.params, option=orjson.OPT_SORT_KEYS))


def build_runtime(
    config: FirewallConfig,
    metrics: Metrics | None = None,
    previous: Runtime | None = None,
    context: DetectorContext | None = None,
) -> Runtime:
    """Construct (but do not start) the detectors, policy and routes for ``config``.

    Detectors whose name, type and params are unchanged from ``previous`` are
    carried over as they are (already loaded: a reload does not reload models).
    ``context`` defaults to the previous runtime's, so a reload keeps it.
    """
    if context is None and previous is not None:
        context = previous.context
    carried: dict[tuple[str, str, bytes], Detector[Any]] = {}
    if previous is not None:
        for old in previous.config.detectors:
            if old.name in previous.detectors:
                carried[_identity(old)] = previous.detectors[old.name]
    detectors: dict[str, Detector[Any]] = {}
    reused: set[str] = set()
    capabilities: dict[str, tuple[frozenset[Phase], Cost]] = {}
    for det in config.detectors:
        if not det.enabled:
            continue
        cls = load_detector_class(det.kind)
        existing = carried.get(_identity(det))
        if existing is not None:
            detectors[det.name] = existing
            reused.add(det.name)
        else:
            detectors[det.name] = cls(det.name, cls.parse_params(det.params))
        capabilities[det.name] = (cls.phases, cls.cost)
    policy = compile_policy(config, capabilities)
    routes = {r.name: _matched(r, adapter_for(r), policy.for_route(r.name)) for r in config.routing.routes}
    return Runtime(
        config=config,
        config_hash=config_hash(config),
        policy=policy,
        detectors=detectors,
        routes=RouteTable(routes),
        pipeline=Pipeline(
            detectors,
            metrics,
            inline_max_chars=config.server.inline_max_chars,
            inline_budget_seconds=config.server.inline_budget_ms / 1000,
        ),
        reused=frozenset(reused),
        context=context,
    )
