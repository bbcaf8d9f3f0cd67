"""Hot reload: SIGHUP or a changed config file swaps in a new runtime, or keeps the old one.

A reload reads and validates the file (with the same environment and command-line
overrides as at start), builds a new :class:`~firewall.screening.runtime.Runtime` off the
request path, loading only the detectors that are new or whose params changed,
and swaps the server's runtime reference in one assignment. Requests that started
before the swap finish under the runtime they started with; detectors only the
old runtime used are closed once those requests are done.

Nothing is half-applied. A config that does not validate, a new required
detector that does not load, or a change to a setting that needs a restart
(listen addresses, the upstream, the audit sink) leaves the old runtime serving
and sets ``trigger_firewall_config_last_reload_successful`` to 0.

Kubernetes updates a ConfigMap volume by swapping a ``..data`` symlink in the
mounted directory (a ``subPath`` mount never updates), so the watcher compares
the resolved target, inode, size and mtime of the file, not just its mtime.

Detectors' data files count as config too. A detector is carried over when its
name, type and params are unchanged, but its params name a file (a vocabulary, a
baseline) only by path, so a file rewritten in place would never be read again. A
reload therefore also rebuilds every detector whose loaded file's signature
changed (:meth:`~detectors.base.Detector.loaded_files`), even when the config is
the same, and the watcher polls those files as it polls the config file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from firewall.config.schema import FirewallConfig, config_hash, load_config
from firewall.core.errors import ConfigError
from firewall.core.files import FileSignature, file_signature
from firewall.screening.runtime import Runtime, build_runtime
from firewall.server.heap import freeze_long_lived

if TYPE_CHECKING:
    from firewall.server.lifecycle import Server

__all__ = ["RESTART_SECTIONS", "Reloader"]

log = logging.getLogger("trigger_firewall.reload")

#: Sections whose change needs a restart: sockets, the upstream session, the log sinks.
RESTART_SECTIONS = ("server", "upstream", "audit", "score_log")


def _changed_files(runtime: Runtime) -> tuple[frozenset[str], dict[str, FileSignature | None]]:
    """The detectors of ``runtime`` whose loaded data files changed since they read them,
    and the current signature of every such file (a ``stat`` each)."""
    stale: set[str] = set()
    current: dict[str, FileSignature | None] = {}
    for name, det in runtime.detectors.items():
        for path, loaded in det.loaded_files().items():
            now = current[path] = file_signature(path)
            if now != loaded:
                stale.add(name)
    return frozenset(stale), current


class Reloader:
    """Applies config changes to a running :class:`~firewall.server.lifecycle.Server`."""

    def __init__(
        self,
        server: Server,
        path: str | os.PathLike[str] | None,
        *,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.server = server
        self.path = Path(path) if path else None
        self.overrides = dict(overrides or {})
        self.environ = environ
        self._lock = asyncio.Lock()
        self._signature = file_signature(self.path) if self.path else None
        self._task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        # Detector data files as the watcher last reloaded for them: a change that a reload
        # could not apply (a bad file for a required detector) is retried only when the
        # files change again, not at every poll.
        self._files_tried: dict[str, FileSignature | None] = {}

    def trigger(self, reason: str) -> None:
        """Schedule a reload (SIGHUP handler); overlapping triggers run one after the other."""
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def reload(self, reason: str) -> bool:
        """Load, validate and swap; True if the new config is live.

        Without a config file (started from defaults, env and flags) there is nothing
        that can have changed: the request is logged and ignored, and the reload metrics
        stay as they are, so a SIGHUP sent to every pod never fires the reload alert.
        """
        if self.path is None:
            log.info("reload requested without a config file: nothing to reload", extra={"reason": reason})
            return False
        async with self._lock:
            started = time.perf_counter()
            metrics = self.server.metrics
            try:
                config = self._load()
                new_runtime = await self._apply(config)
            except ConfigError as exc:
                metrics.reload_ok.set(0)
                metrics.count_reload("failure")
                log.error(
                    "config reload rejected; the previous config stays live",
                    extra={"reason": reason, "errors": str(exc)},
                )
                return False
            metrics.reload_ok.set(1)
            metrics.reload_ts.set(time.time())
            metrics.count_reload("success")
            log.info(
                "config reloaded",
                extra={
                    "reason": reason,
                    "config_hash": new_runtime.config_hash,
                    "reused_detectors": sorted(new_runtime.reused),
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
            return True

    def _load(self) -> FirewallConfig:
        path = self.path
        if path is None:  # reload() returns before this; kept so the type is narrowed honestly
            raise ConfigError("no config file to reload")
        self._signature = file_signature(path)
        return load_config(path, environ=self.environ, overrides=self.overrides)

    async def _apply(self, config: FirewallConfig) -> Runtime:
        server = self.server
        old = server.state.runtime
        changed = [
            name
            for name in RESTART_SECTIONS
            if getattr(config, name).model_dump(mode="json")
            != getattr(old.config, name).model_dump(mode="json")
        ]
        if changed:
            raise ConfigError(f"changing {', '.join(changed)} requires a restart")
        stale, _ = _changed_files(old)
        if config_hash(config) == old.config_hash and not stale:
            return old
        previous = old
        if stale:
            log.info("detector data files changed; reloading them", extra={"detectors": sorted(stale)})
            # Not offered for carry-over: build_runtime constructs them afresh and start() reads the files.
            kept = {name: det for name, det in old.detectors.items() if name not in stale}
            previous = dataclasses.replace(old, detectors=kept)
        new = build_runtime(config, server.metrics, previous=previous)
        await new.start(server.metrics)
        failed = [
            d.name
            for d in config.detectors
            if d.enabled and d.required and d.name not in new.reused and not new.detectors[d.name].ready
        ]
        if failed:
            await new.close(keep=old.detectors)
            raise ConfigError(f"required detectors failed to load: {', '.join(failed)}")
        server.install_runtime(new)
        retire = asyncio.get_running_loop().create_task(self._retire(old, new))
        self._background.add(retire)
        retire.add_done_callback(self._background.discard)
        return new

    async def _retire(self, old: Runtime, new: Runtime) -> None:
        """Close the old runtime's own detectors once its last request is done."""
        timeout = self.server.config.server.shutdown_timeout_seconds
        try:
            async with asyncio.timeout(timeout):
                await old.users.wait_idle()
        except TimeoutError:
            log.warning("requests under the previous config still running; closing its detectors")
        await old.close(keep=new.detectors)
        if self.server.freeze_heap:
            freeze_long_lived()  # reclaim the old runtime's cycles; exempt the new one from collections

    async def watch(self, poll_seconds: float) -> None:
        """Poll the config file and the detectors' data files; reload when one may have changed."""
        if self.path is None:
            return
        while True:
            await asyncio.sleep(poll_seconds)
            current = file_signature(self.path)
            if current is not None and current != self._signature:
                await self.reload("file changed")
                continue
            stale, files = _changed_files(self.server.state.runtime)
            if stale and files != self._files_tried:
                self._files_tried = files
                await self.reload("detector file changed")

    def start_watching(self, poll_seconds: float) -> None:
        if self.path is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.watch(poll_seconds))

    async def close(self) -> None:
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
