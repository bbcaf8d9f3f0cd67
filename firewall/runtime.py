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
from dataclasses import dataclass

from detectors import load_detector_class
from detectors.base import Detector
from firewall.config import FirewallConfig, RouteConfig, config_hash
from firewall.metrics import Metrics
from firewall.pipeline import Pipeline
from firewall.policy import Policy, RoutePolicy, compile_policy
from firewall.protocols import ProtocolAdapter, adapter_for
from firewall.types import Cost, Phase

__all__ = ["MatchedRoute", "RouteTable", "Runtime", "build_runtime"]

log = logging.getLogger("trigger_firewall.runtime")

_PARAM = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class MatchedRoute:
    config: RouteConfig
    adapter: ProtocolAdapter
    policy: RoutePolicy


class RouteTable:
    """Maps a request path and method to its screened route (exact paths first)."""

    def __init__(self, routes: Mapping[str, MatchedRoute]) -> None:
        self._by_name = dict(routes)
        self._exact: dict[str, list[MatchedRoute]] = {}
        self._templated: list[tuple[re.Pattern[str], MatchedRoute]] = []
        for matched in routes.values():
            path = matched.config.path
            if _PARAM.search(path):
                pattern = _PARAM.sub(r"[^/]+", re.escape(path).replace(r"\{", "{").replace(r"\}", "}"))
                self._templated.append((re.compile(f"^{pattern}$"), matched))
            else:
                self._exact.setdefault(path.rstrip("/") or "/", []).append(matched)

    def by_name(self, name: str) -> MatchedRoute:
        return self._by_name[name]

    def names(self) -> list[str]:
        return list(self._by_name)

    def match(self, method: str, path: str) -> MatchedRoute | None:
        for matched in self._exact.get(path.rstrip("/") or "/", ()):
            if method in matched.config.methods:
                return matched
        for pattern, matched in self._templated:
            if method in matched.config.methods and pattern.match(path):
                return matched
        return None


@dataclass(frozen=True, slots=True)
class Runtime:
    """A live configuration: everything a request needs, swapped as one reference."""

    config: FirewallConfig
    config_hash: str
    policy: Policy
    detectors: Mapping[str, Detector]
    routes: RouteTable
    pipeline: Pipeline

    @property
    def ready(self) -> bool:
        """True when every detector marked ``required`` is ready."""
        return all(
            self.detectors[d.name].ready
            for d in self.config.detectors
            if d.enabled and d.required and d.name in self.detectors
        )

    async def start(self, metrics: Metrics | None = None) -> None:
        """Load every detector; a failure is logged and leaves that detector not ready."""

        async def start_one(name: str, det: Detector) -> None:
            try:
                await det.start()
            except Exception:
                log.exception("detector %s failed to start", name)
            if metrics is not None:
                metrics.detector_ready.labels(name).set(1 if det.ready else 0)

        await asyncio.gather(*(start_one(n, d) for n, d in self.detectors.items()))

    async def close(self) -> None:
        for name, det in self.detectors.items():
            try:
                await det.close()
            except Exception:
                log.exception("detector %s failed to close", name)


def build_runtime(config: FirewallConfig, metrics: Metrics | None = None) -> Runtime:
    """Construct (but do not start) the detectors, policy and routes for ``config``."""
    detectors: dict[str, Detector] = {}
    capabilities: dict[str, tuple[frozenset[Phase], Cost]] = {}
    for det in config.detectors:
        if not det.enabled:
            continue
        cls = load_detector_class(det.kind)
        detectors[det.name] = cls(det.name, cls.parse_params(det.params))
        capabilities[det.name] = (cls.phases, cls.cost)
    policy = compile_policy(config, capabilities)
    routes = {
        r.name: MatchedRoute(config=r, adapter=adapter_for(r), policy=policy.for_route(r.name))
        for r in config.routing.routes
    }
    return Runtime(
        config=config,
        config_hash=config_hash(config),
        policy=policy,
        detectors=detectors,
        routes=RouteTable(routes),
        pipeline=Pipeline(detectors, metrics),
    )
