"""The probe's upstream client: one metered, cached, bounded way to ask the model.

Why one client
--------------
``--budget N`` is a public contract: the sweep never sends more than N requests upstream.
Every request of a run goes through :meth:`ProbeClient.ask`, which is the only place a
request is counted, so the cap holds whatever the search does: a request is counted when
it is sent (a failed or timed-out one included), and one that would exceed the budget is
not sent (``ask`` answers ``None`` and :attr:`ProbeClient.exhausted` turns true).

Resume
------
With ``state`` (``--state FILE``) every answered request is appended to a JSONL file as
``{"key", "text", "dist"}``, keyed by a SHA-256 of the upstream URL, the route and the
request body (model, prompt, max_tokens, seed, logprob fields: all of it). A later run
with the same file answers those requests from it and spends nothing on them
(:attr:`ProbeClient.reused` counts them); since the search is deterministic, a rerun asks
the same questions, so it finishes a sweep a smaller budget stopped. Failed requests are
not stored: a rerun tries them again. Two identical requests in flight at once are sent
once. The API key is never written.

What a probe is
---------------
The shape ``counterfactual`` uses: an OpenAI chat request (one user message) or a text
completion, ``temperature: 0``, a fixed ``seed``, ``max_tokens``, no tools, no ``n``, not
streamed, with the header ``X-Firewall-Probe: probe`` (a firewall in front of the model can
tell these from traffic). With ``logprobs`` the request asks for ``max_tokens: 1`` and the
first token's ``top_logprobs``: the answer then carries that distribution (``dist``).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import aiohttp
import orjson

from detectors.counterfactual.detector import answer_text
from firewall.core.detector_context import UpstreamProbeError

__all__ = ["Answer", "ClientOptions", "ProbeClient", "UpstreamDownError"]

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
#: This many failures in a row stop the run: the upstream is down, not flaky.
MAX_FAILURES_IN_A_ROW = 10


@dataclass(frozen=True, slots=True)
class Answer:
    """A probe's answer: its text and, when asked for and returned, the first token's top-k
    probabilities (token -> probability)."""

    text: str
    dist: dict[str, float] | None = None


@dataclass(frozen=True, slots=True)
class ClientOptions:
    upstream: str
    model: str
    api: Literal["chat", "completions"] = "chat"
    max_tokens: int = 32
    seed: int = 0
    top_logprobs: int = 5
    budget: int = 2000
    concurrency: int = 8
    timeout_s: float = 30.0
    api_key: str | None = None
    state: Path | None = None


class UpstreamDownError(RuntimeError):
    """The upstream cannot be reached or keeps failing: the run stops (exit code 2)."""


class ProbeClient:
    """Asks the upstream within the budget, at most ``concurrency`` requests at once."""

    def __init__(self, options: ClientOptions) -> None:
        self.options = options
        self.spent = 0
        self.reused = 0
        self.failed = 0
        self.exhausted = False
        self.last_error: str | None = None
        self._in_a_row = 0
        self._cache: dict[str, Answer] = {}
        self._inflight: dict[str, asyncio.Future[Answer | None]] = {}
        self._slots = asyncio.Semaphore(max(1, options.concurrency))
        self._session: aiohttp.ClientSession | None = None
        self._state: IO[bytes] | None = None

    async def __aenter__(self) -> ProbeClient:
        if self.options.state is not None:
            self._cache.update(_read_state(self.options.state))
            self._state = self.options.state.open("ab")
        headers = {"Content-Type": "application/json", "X-Firewall-Probe": "probe"}
        if self.options.api_key:
            headers["Authorization"] = f"Bearer {self.options.api_key}"
        self._session = aiohttp.ClientSession(
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.options.timeout_s),
            # Each probe stands alone: a cookie from one answer must not steer the next.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._state is not None:
            self._state.close()

    @property
    def cached(self) -> int:
        """Answers held (from the state file and this run)."""
        return len(self._cache)

    def body(self, text: str, logprobs: bool) -> dict[str, Any]:
        o = self.options
        body: dict[str, Any] = {
            "model": o.model,
            "max_tokens": 1 if logprobs else o.max_tokens,
            "temperature": 0,
            "seed": o.seed,
            "stream": False,
        }
        if o.api == "chat":
            body["messages"] = [{"role": "user", "content": text}]
            if logprobs:
                body["logprobs"] = True
                body["top_logprobs"] = o.top_logprobs
        else:
            body["prompt"] = text
            if logprobs:
                body["logprobs"] = o.top_logprobs
        return body

    def _key(self, body: dict[str, Any]) -> str:
        where = self.options.upstream.rstrip("/") + _PATHS[self.options.api]
        blob = orjson.dumps({"url": where, "body": body}, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(blob).hexdigest()

    async def ask(self, text: str, *, logprobs: bool = False, strict: bool = False) -> Answer | None:
        """The answer to ``text``; ``None`` when the request failed or the budget is spent.

        ``strict``: raise :class:`UpstreamDownError` on failure instead (the first request of
        a run, which tells a dead upstream from a flaky one).
        """
        body = self.body(text, logprobs)
        key = self._key(body)
        hit = self._cache.get(key)
        if hit is not None:
            self.reused += 1
            return hit
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        if self.spent >= self.options.budget:
            self.exhausted = True
            return None
        self.spent += 1  # counted when decided, so concurrent callers never overshoot the cap
        future: asyncio.Future[Answer | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            answer = await self._send(body, logprobs, strict)
            if answer is not None:
                self._store(key, answer)
            future.set_result(answer)
            return answer
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: no "exception never retrieved" warning
            raise
        finally:
            del self._inflight[key]

    async def _send(self, body: dict[str, Any], logprobs: bool, strict: bool) -> Answer | None:
        assert self._session is not None  # noqa: S101 - used inside ``async with`` only
        url = self.options.upstream.rstrip("/") + _PATHS[self.options.api]
        async with self._slots:
            try:
                async with self._session.post(url, data=orjson.dumps(body)) as resp:
                    raw = await resp.read()
                    if resp.status != 200:
                        raise _Failed(f"HTTP {resp.status} from {url}: {raw[:200].decode(errors='replace')}")
                answer = _parse(orjson.loads(raw), self.options.api, logprobs)
            except (_Failed, aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
                if isinstance(exc, aiohttp.ClientConnectionError | OSError):
                    reason = f"cannot reach {url}: {reason}"
                self._failure(reason, strict)
                return None
        self._in_a_row = 0
        return answer

    def _failure(self, reason: str, strict: bool) -> None:
        self.failed += 1
        self._in_a_row += 1
        self.last_error = reason
        if strict:
            raise UpstreamDownError(reason)
        if self._in_a_row >= MAX_FAILURES_IN_A_ROW:
            raise UpstreamDownError(f"{self._in_a_row} requests failed in a row; last: {reason}")

    def _store(self, key: str, answer: Answer) -> None:
        self._cache[key] = answer
        if self._state is not None:
            line = {"key": key, "text": answer.text, "dist": answer.dist}
            self._state.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            self._state.flush()


class _Failed(Exception):
    """An answer that is not a usable probe answer (status, shape)."""


def _parse(data: Any, api: str, logprobs: bool) -> Answer:
    try:
        text = answer_text(data, api)
    except UpstreamProbeError as exc:
        raise _Failed(str(exc)) from exc
    return Answer(text, _first_token_dist(data["choices"][0], api) if logprobs else None)


def _first_token_dist(choice: Any, api: str) -> dict[str, float] | None:
    """The first token's top-k as probabilities, or None when the answer carries none."""
    try:
        lp = choice["logprobs"]
        if api == "chat":
            top = lp["content"][0]["top_logprobs"]
            pairs = [(str(t["token"]), float(t["logprob"])) for t in top]
        else:
            pairs = [(str(t), float(v)) for t, v in lp["top_logprobs"][0].items()]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    dist = {token: math.exp(value) for token, value in pairs if math.isfinite(value)}
    return dist or None


def _read_state(path: Path) -> dict[str, Answer]:
    """The answers a state file holds; a torn last line (a run killed mid-write) is skipped."""
    out: dict[str, Answer] = {}
    if not path.exists():
        return out
    with path.open("rb") as fh:
        for line in fh:
            try:
                record = orjson.loads(line)
                dist = record.get("dist")
                out[str(record["key"])] = Answer(
                    str(record["text"]),
                    {str(k): float(v) for k, v in dist.items()} if isinstance(dist, dict) else None,
                )
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                continue
    return out
