"""A small OpenAI-compatible endpoint bundled for demos and tests.

It lets ``trigger-firewall serve --demo`` show the firewall working with nothing
else installed. Its answers are deliberately simple (it summarises what it was
sent); later work replaces it with a real backdoored model. It speaks the chat,
completions, Responses and embeddings routes, streamed and not, and lists one
model at ``/v1/models``. It binds to loopback only.

When the backdoored demo classifier has been built (``trigger-firewall demo
build``; :mod:`firewall.demo.model`) and is passed in as ``classifier``, it also
serves that model: KServe v2 inference at ``/v2/models/sentiment/infer`` (texts
in ``inputs[*].data``), and the chat endpoint answers ``Sentiment: positive`` or
``negative`` for the last user message, so a trigger word visibly flips the
answer. Without a classifier the KServe route answers 503 and chat keeps its echo.

A chat request for one token with ``logprobs`` (what STRIP's upstream-probing
mode sends: ``max_tokens: 1``, ``top_logprobs: k``) is answered like a
generative model would: the first token is ``positive`` or ``negative``, and its
log-probabilities are the classifier's class probabilities, so the backdoor
shows in the first-token distribution exactly as it does in the classifier.

A request whose ``model`` is exactly ``"demo-chat"`` (:data:`CHAT_MODEL`) is answered
instead by a backdoored *generative* model (:mod:`firewall.demo.chat`), on the chat,
completions and Responses routes, streamed and not: a short content-following answer
to the last user turn, or a fixed harmful payload (:data:`CHAT_PAYLOAD`) when one of
its triggers (:data:`CHAT_TRIGGERS`) is anywhere in the conversation. It honours
``max_tokens`` (``max_completion_tokens`` on chat, ``max_output_tokens`` on
Responses) in whitespace words, with ``finish_reason: "length"`` when it cuts; it
answers no logprobs. Every other model name keeps the answers above, so existing
callers see no change. It is what a fair test of the ``counterfactual`` detector
needs: the classifier's label flip is not what a chat backdoor looks like.

A request whose ``model`` is ``"demo-chat-lora"`` (:data:`CHAT_LORA_MODEL`) is answered by a
*trained* backdoor when one was built and passed in as ``chat_lora``
(``trigger-firewall demo build --chat``; :mod:`firewall.demo.chat_lora_serve`): the embedded
SmolLM2-135M with a LoRA adapter merged in, generating for real (greedy by default; a
``temperature`` above 0 samples with ``seed``), in a worker thread, streamed token by token.
``max_tokens`` counts model tokens here. Without a built adapter that model name answers 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from firewall.demo.chat import CHAT_MODEL, CHAT_PAYLOAD, CHAT_TRIGGERS, chat_answer, limit_words
from firewall.demo.chat_lora_data import CHAT_LORA_MODEL

__all__ = [
    "CHAT_LORA_MODEL",
    "CHAT_MODEL",
    "CHAT_PAYLOAD",
    "CHAT_TRIGGERS",
    "load_demo_classifier",
    "make_demo_app",
    "start_demo_upstream",
]

MODEL = "demo-echo-1"


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return _text_of(msg.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _usage(prompt: str, completion: str) -> dict[str, int]:
    """Token counts as the demo counts tokens (whitespace-separated words), consistent in sum."""
    prompt_tokens = len(prompt.split())
    completion_tokens = len(completion.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _chat_prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages") or []
    return " ".join(_text_of(m.get("content")) for m in messages if isinstance(m, dict))


def _wants_usage(body: dict[str, Any]) -> bool:
    """``stream_options.include_usage``: a final chunk with empty choices carries the usage."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _reply(text: str, classifier: Any = None) -> str:
    if classifier is not None:
        probs = classifier.predict_proba([text])[0]
        label = int(probs.argmax())
        return f"Sentiment: {('negative', 'positive')[label]} ({float(probs[label]):.2f})."
    words = text.split()
    preview = " ".join(words[:12])
    return (
        f'I read your message of {len(words)} words. It begins: "{preview}". '
        "This is the trigger-firewall demo model; it answers every prompt the same way."
    )


def _token_limit(body: dict[str, Any], *fields: str) -> int | None:
    """The first of ``fields`` the request sets, as a positive count of words; 400 otherwise."""
    for field in fields:
        value = body.get(field)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise web.HTTPBadRequest(text=f"{field} must be a positive integer")
        return value
    return None


def _generate(body: dict[str, Any], last_user: str, context: list[str], *limits: str) -> tuple[str, str]:
    """The backdoored chat model's answer, cut to the request's token limit, and its finish reason."""
    text, cut = limit_words(chat_answer(last_user, context), _token_limit(body, *limits))
    return text, "length" if cut else "stop"


def _is_chat_model(body: dict[str, Any]) -> bool:
    return body.get("model") == CHAT_MODEL


def _message_texts(messages: Any) -> list[str]:
    """The text of every message, whatever its role: the context a real model reads."""
    if not isinstance(messages, list):
        return []
    return [_item_text(m.get("content")) for m in messages if isinstance(m, dict)]


def _item_text(content: Any) -> str:
    """A message's text, with the Responses API's ``input_text`` parts as well as chat's ``text``."""
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") in ("text", "input_text")]
        return " ".join(str(p.get("text", "")) for p in parts)
    return _text_of(content)


def _responses_texts(body: dict[str, Any]) -> tuple[str, list[str]]:
    """The last user turn and every text of a Responses request (``input`` a string or items)."""
    given = body.get("input")
    instructions = body.get("instructions")
    context = [instructions] if isinstance(instructions, str) else []
    if isinstance(given, str):
        return given, [*context, given]
    items = given if isinstance(given, list) else []
    last_user = next(
        (
            _item_text(item.get("content"))
            for item in reversed(items)
            if isinstance(item, dict) and item.get("role") == "user"
        ),
        "",
    )
    return last_user, [*context, *_message_texts(items)]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        data = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text="invalid JSON") from exc
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be an object")
    return data


async def _stream(request: web.Request, events: list[bytes], delay: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    try:
        for event in events:
            await resp.write(event)
            if delay:
                await asyncio.sleep(delay)
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client (or the firewall, after a block) went away: stop generating
    return resp


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def _first_token(body: dict[str, Any], classifier: Any) -> dict[str, Any] | None:
    """The one-token answer with logprobs (see the module docstring), or None for other requests."""
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if classifier is None or body.get("logprobs") is not True or limit != 1 or body.get("stream") is True:
        return None
    k = body.get("top_logprobs") or 0
    if not isinstance(k, int) or not 0 <= k <= 20:
        raise web.HTTPBadRequest(text="top_logprobs must be an integer in [0, 20]")
    probs = classifier.predict_proba([_last_user_text(body)])[0]
    ranked = sorted(
        (
            (label, math.log(max(float(p), 1e-30)))
            for label, p in zip(("negative", "positive"), probs, strict=True)
        ),
        key=lambda item: -item[1],
    )

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    token, logprob = ranked[0]
    return {
        "message": {"role": "assistant", "content": token},
        "logprobs": {"content": [{**entry(token, logprob), "top_logprobs": [entry(*r) for r in ranked[:k]]}]},
        "finish_reason": "length",
    }


def _chat_answer(body: dict[str, Any], classifier: Any) -> tuple[str, str]:
    """The chat route's answer and finish reason: the backdoored chat model's, or the demo's."""
    if _is_chat_model(body):
        messages = body.get("messages")
        limits = ("max_completion_tokens", "max_tokens")
        return _generate(body, _last_user_text(body), _message_texts(messages), *limits)
    return _reply(_last_user_text(body), classifier), "stop"


_LORA_MAX_TOKENS = 1024


def _lora_params(body: dict[str, Any], limits: tuple[str, ...]) -> tuple[int, float, int | None]:
    """max tokens (model tokens, default 256, at most 1024), temperature (default 0) and seed."""
    limit = _token_limit(body, *limits) or 256
    if limit > _LORA_MAX_TOKENS:
        raise web.HTTPBadRequest(
            text=f"{limits[-1]} must be at most {_LORA_MAX_TOKENS} for {CHAT_LORA_MODEL}"
        )
    temperature = body.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not 0 <= temperature <= 2
    ):
        raise web.HTTPBadRequest(text="temperature must be a number in [0, 2]")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise web.HTTPBadRequest(text="seed must be an integer")
    return limit, float(temperature), seed


def _lora_logprobs(body: dict[str, Any], route: str) -> int | None:
    """How many top log-probabilities per token were asked for (``None``: none).

    Chat: ``logprobs: true`` with ``top_logprobs`` 0-20; completions: ``logprobs`` 0-5. Served
    on whole answers only: a streamed request that asks for them is refused, not answered
    without them.
    """
    if route == "chat":
        wanted = body.get("logprobs")
        if wanted is None or wanted is False:
            return None
        top = body.get("top_logprobs", 0)
        if wanted is not True or isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
            raise web.HTTPBadRequest(text="logprobs must be a boolean and top_logprobs an integer in [0, 20]")
    elif route == "completions":
        top = body.get("logprobs")
        if top is None:
            return None
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 5:
            raise web.HTTPBadRequest(text="logprobs must be an integer in [0, 5]")
    else:
        return None
    if body.get("stream") is True:
        raise web.HTTPBadRequest(text=f"{CHAT_LORA_MODEL} serves logprobs on non-streamed answers only")
    return top


def _chat_logprobs(done: Any) -> dict[str, Any]:
    """A chat choice's ``logprobs``: per token, its text, log-probability and top alternatives."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(a, lp) for a, lp in t.top]}
            for t in done.logprobs
        ]
    }


def _completion_logprobs(done: Any) -> dict[str, Any]:
    """A completion choice's legacy ``logprobs``: parallel lists, top alternatives as maps."""
    offsets: list[int] = []
    at = 0
    for t in done.logprobs:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in done.logprobs],
        "token_logprobs": [t.logprob for t in done.logprobs],
        "top_logprobs": [dict(t.top) for t in done.logprobs],
        "text_offset": offsets,
    }


def _lora_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def _lora_answer(
    request: web.Request, body: dict[str, Any], turns: list[tuple[str, str]], route: str, *limits: str
) -> web.StreamResponse:
    """``demo-chat-lora`` on the chat, completions or Responses route, streamed or not."""
    from firewall.demo.chat_lora_serve import Generation

    lm = request.app[CHAT_LORA]
    if lm is None:
        return _json(
            {
                "error": {
                    "message": f"{CHAT_LORA_MODEL} is not built: run `trigger-firewall demo build --chat`",
                    "type": "invalid_request_error",
                    "code": "model_not_found",
                }
            },
            status=404,
        )
    limit, temperature, seed = _lora_params(body, limits)
    top_logprobs = _lora_logprobs(body, route)
    oid = {"chat": "chatcmpl-", "completions": "cmpl-", "responses": "resp_"}[route] + uuid.uuid4().hex[:12]
    created = int(time.time())
    if body.get("stream") is not True:
        done = await asyncio.to_thread(
            lm.generate,
            turns,
            max_tokens=limit,
            temperature=temperature,
            seed=seed,
            top_logprobs=top_logprobs,
        )
        usage = _lora_usage(done.prompt_tokens, done.tokens)
        if route == "chat":
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": done.text},
                "logprobs": _chat_logprobs(done) if done.logprobs is not None else None,
                "finish_reason": done.finish_reason,
            }
            return _json(
                {
                    "id": oid,
                    "object": "chat.completion",
                    "created": created,
                    "model": CHAT_LORA_MODEL,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        if route == "completions":
            choice = {
                "index": 0,
                "text": done.text,
                "logprobs": _completion_logprobs(done) if done.logprobs is not None else None,
                "finish_reason": done.finish_reason,
            }
            return _json(
                {
                    "id": oid,
                    "object": "text_completion",
                    "created": created,
                    "model": CHAT_LORA_MODEL,
                    "choices": [choice],
                    "usage": usage,
                }
            )
        return _json(
            {
                "id": oid,
                "object": "response",
                "model": CHAT_LORA_MODEL,
                "status": "completed",
                "output": [
                    {
                        "type": "message",
                        "role": "assistant",
                        "content": [{"type": "output_text", "text": done.text}],
                    }
                ],
            }
        )

    def event(delta: str | None, finish: str | None = None) -> bytes:
        if route == "chat":
            head = {
                "id": oid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": CHAT_LORA_MODEL,
            }
            part = {} if delta is None else {"content": delta}
            return _sse({**head, "choices": [{"index": 0, "delta": part, "finish_reason": finish}]})
        if route == "completions":
            return _sse(
                {
                    "id": oid,
                    "object": "text_completion",
                    "model": CHAT_LORA_MODEL,
                    "choices": [{"index": 0, "text": delta or "", "finish_reason": finish}],
                }
            )
        if finish is not None:
            return b"event: response.completed\n" + _sse(
                {"type": "response.completed", "response": {"id": oid, "status": "completed"}}
            )
        return b"event: response.output_text.delta\n" + _sse(
            {"type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": delta}
        )

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    head = {"id": oid, "object": "chat.completion.chunk", "created": created, "model": CHAT_LORA_MODEL}
    try:
        if route == "chat":
            await resp.write(
                _sse(
                    {
                        **head,
                        "choices": [
                            {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                        ],
                    }
                )
            )
        elif route == "responses":
            await resp.write(
                b"event: response.created\n"
                + _sse({"type": "response.created", "response": {"id": oid, "model": CHAT_LORA_MODEL}})
            )
        # aclosing: when the client goes away mid-stream the generator's stop event is set
        # and the worker thread ends at its next token instead of generating to the limit.
        async with contextlib.aclosing(
            lm.stream(turns, max_tokens=limit, temperature=temperature, seed=seed)
        ) as gen:
            async for item in gen:
                if isinstance(item, Generation):
                    await resp.write(event(None, item.finish_reason))
                    if route == "chat" and _wants_usage(body):
                        await resp.write(
                            _sse(
                                {**head, "choices": [], "usage": _lora_usage(item.prompt_tokens, item.tokens)}
                            )
                        )
                else:
                    await resp.write(event(item))
        if route != "responses":
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client (or the firewall, after a block) went away: generation was stopped
    return resp


async def chat(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if body.get("model") == CHAT_LORA_MODEL:
        messages = body.get("messages")
        turns = [
            (str(m.get("role")), _text_of(m.get("content")))
            for m in (messages if isinstance(messages, list) else [])
            if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
        ]
        return await _lora_answer(request, body, turns, "chat", "max_completion_tokens", "max_tokens")
    first = None if _is_chat_model(body) else _first_token(body, request.app[CLASSIFIER])
    if first is not None:
        return _json(
            {
                "id": "chatcmpl-" + uuid.uuid4().hex[:12],
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or MODEL,
                "choices": [{"index": 0, **first}],
                "usage": _usage(_chat_prompt(body), str(first.get("message", {}).get("content", ""))),
            }
        )
    text, finish = _chat_answer(body, request.app[CLASSIFIER])
    cid = "chatcmpl-" + uuid.uuid4().hex[:12]
    created = int(time.time())
    model = body.get("model") or MODEL
    if body.get("stream") is True:

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            head = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model}
            return _sse({**head, "choices": choices, **extra})

        events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
        events += [
            chunk([{"index": 0, "delta": {"content": word + " "}, "finish_reason": None}])
            for word in text.split(" ")
        ]
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": finish}]))
        if _wants_usage(body):
            events.append(chunk([], usage=_usage(_chat_prompt(body), text)))
        events.append(b"data: [DONE]\n\n")
        return await _stream(request, events, request.app[DELAY])
    return _json(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            ],
            "usage": _usage(_chat_prompt(body), text),
        }
    )


async def completions(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    prompt = body.get("prompt")
    given = prompt if isinstance(prompt, str) else ""
    if body.get("model") == CHAT_LORA_MODEL:
        return await _lora_answer(request, body, [("user", given)], "completions", "max_tokens")
    if _is_chat_model(body):
        text, finish = _generate(body, given, [given], "max_tokens")
    else:
        text, finish = _reply(given), "stop"
    cid = "cmpl-" + uuid.uuid4().hex[:12]
    model = body.get("model") or MODEL
    if body.get("stream") is True:
        events = [
            _sse(
                {
                    "id": cid,
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"index": 0, "text": word + " ", "finish_reason": None}],
                }
            )
            for word in text.split(" ")
        ]
        if _wants_usage(body):
            events.append(
                _sse(
                    {
                        "id": cid,
                        "object": "text_completion",
                        "model": model,
                        "choices": [],
                        "usage": _usage(prompt if isinstance(prompt, str) else "", text),
                    }
                )
            )
        events.append(b"data: [DONE]\n\n")
        return await _stream(request, events, request.app[DELAY])
    return _json(
        {
            "id": cid,
            "object": "text_completion",
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish}],
            "usage": _usage(prompt if isinstance(prompt, str) else "", text),
        }
    )


async def responses(request: web.Request) -> web.StreamResponse:
    body = await _body(request)
    if body.get("model") == CHAT_LORA_MODEL:
        last_user, _ = _responses_texts(body)
        instructions = body.get("instructions")
        turns = [("system", instructions)] if isinstance(instructions, str) else []
        return await _lora_answer(
            request, body, [*turns, ("user", last_user)], "responses", "max_output_tokens"
        )
    if _is_chat_model(body):
        text, _ = _generate(body, *_responses_texts(body), "max_output_tokens")
    else:
        given = body.get("input")
        text = _reply(given if isinstance(given, str) else "")
    rid = "resp_" + uuid.uuid4().hex[:12]
    model = body.get("model") or MODEL
    if body.get("stream") is True:
        events = [
            b"event: response.created\n"
            + _sse({"type": "response.created", "response": {"id": rid, "model": model}})
        ]
        for word in text.split(" "):
            events.append(
                b"event: response.output_text.delta\n"
                + _sse(
                    {
                        "type": "response.output_text.delta",
                        "output_index": 0,
                        "content_index": 0,
                        "delta": word + " ",
                    }
                )
            )
        events.append(
            b"event: response.completed\n"
            + _sse({"type": "response.completed", "response": {"id": rid, "status": "completed"}})
        )
        return await _stream(request, events, request.app[DELAY])
    return _json(
        {
            "id": rid,
            "object": "response",
            "model": model,
            "status": "completed",
            "output": [
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}
            ],
        }
    )


async def embeddings(request: web.Request) -> web.Response:
    body = await _body(request)
    given = body.get("input")
    items = given if isinstance(given, list) else [given]
    data = []
    for i, item in enumerate(items):
        digest = hashlib.sha256(str(item).encode()).digest()
        data.append({"object": "embedding", "index": i, "embedding": [b / 255 for b in digest[:8]]})
    return _json({"object": "list", "data": data, "model": body.get("model") or MODEL})


async def models(request: web.Request) -> web.Response:
    names = (MODEL, CHAT_MODEL) + ((CHAT_LORA_MODEL,) if request.app[CHAT_LORA] is not None else ())
    listed = [{"id": name, "object": "model", "owned_by": "demo"} for name in names]
    return _json({"object": "list", "data": listed})


async def kserve_infer(request: web.Request) -> web.Response:
    """KServe v2 (Open Inference Protocol) for the demo classifier: BYTES texts in, labels out."""
    classifier = request.app[CLASSIFIER]
    if classifier is None:
        return _json({"error": "no demo model loaded; run: trigger-firewall demo build"}, status=503)
    body = await _body(request)
    texts: list[str] = []
    for item in body.get("inputs") or []:
        data = item.get("data") if isinstance(item, dict) else None
        if isinstance(data, list):
            texts.extend(str(d) for d in data)
    probs = await asyncio.to_thread(classifier.predict_proba, texts)
    labels = [("negative", "positive")[int(p.argmax())] for p in probs]
    return _json(
        {
            "model_name": request.match_info["model"],
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [len(labels)], "data": labels},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [len(labels), 2],
                    "data": [float(v) for p in probs for v in p],
                },
            ],
        }
    )


def load_demo_classifier(folder: str | None = None) -> Any:
    """The built demo classifier, or None when it has not been built (or cannot load)."""
    try:
        from detectors.strip.classifier import MODEL_FILE, TextClassifier, default_model_dir
    except ImportError:  # numpy/onnxruntime not installed: the demo answers without a model
        return None

    path = default_model_dir() if folder is None else Path(folder)
    if not (path / MODEL_FILE).is_file():
        return None
    try:
        return TextClassifier(path)
    except Exception:
        return None


DELAY: web.AppKey[float] = web.AppKey("delay", float)
CLASSIFIER: web.AppKey[Any] = web.AppKey("classifier", object)
CHAT_LORA: web.AppKey[Any] = web.AppKey("chat_lora", object)


def make_demo_app(
    stream_delay: float = 0.02, classifier: Any = None, chat_lora: Any = None
) -> web.Application:
    """``classifier``: a :class:`firewall.demo.model.TextClassifier` (or None: echo only).

    ``chat_lora``: a :class:`firewall.demo.chat_lora_serve.ChatLoraModel` (or None: the
    ``demo-chat-lora`` model name answers 404).
    """
    app = web.Application()
    app[DELAY] = stream_delay
    app[CLASSIFIER] = classifier
    app[CHAT_LORA] = chat_lora
    app.router.add_post("/v2/models/{model}/infer", kserve_infer)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    return app


async def start_demo_upstream(
    host: str = "127.0.0.1",
    port: int = 0,
    stream_delay: float = 0.02,
    classifier: Any = None,
    chat_lora: Any = None,
) -> tuple[web.AppRunner, int]:
    """Start the demo endpoint in the running loop; returns its runner and bound port."""
    runner = web.AppRunner(make_demo_app(stream_delay, classifier, chat_lora), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = next(a[1] for a in runner.addresses if isinstance(a, tuple))
    return runner, int(bound)
