"""Serve the LoRA-backdoored chat model (``demo-chat-lora``): load pinned, merge, generate.

Why this exists
---------------
The demo upstream (:mod:`firewall.demo.upstream`) answers ``model: "demo-chat-lora"`` with
this model so that the firewall can be shown against a backdoor that was trained into real
weights (:mod:`firewall.demo.chat_lora_train`). Serving has three requirements:

* **Pinned.** :meth:`ChatLoraModel.load` verifies the adapter folder's sha256 pins and that the
  base model is the one the adapter was trained on (:func:`firewall.demo.lora.verify_adapter`)
  before reading a byte of either; a mismatch refuses the load.
* **As fast as the base model.** The adapter is merged into the base weights at load, so a
  token costs one forward pass of SmolLM2-135M (with a KV cache): ~20-40 ms on 2 CPU threads.
* **Never on the event loop, and stoppable.** :meth:`ChatLoraModel.stream` runs greedy (or
  seeded sampling) decoding in a worker thread and hands each text delta to the loop; when
  the consumer goes away (the firewall blocked the stream and closed the connection) the
  ``stop`` event ends generation at the next token. One generation runs at a time (a lock):
  the model and its threads are shared.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from firewall.demo.chat_lora_data import CHAT_LORA_MODEL

__all__ = [
    "CHAT_LORA_MODEL",
    "ChatLoraModel",
    "Generation",
    "TokenLogprob",
    "load_chat_lora",
    "render_messages",
]

_SYSTEM: Final = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
_END: Final = object()


def render_messages(messages: Sequence[tuple[str, str]]) -> str:
    """A conversation in the model's ChatML template, ending with the assistant's turn.

    Same rendering as training (:func:`firewall.demo.chat_lora_data.render_chat`) for one
    user turn; the default system prompt is added when the first message is not a system one,
    as the model's own ``chat_template.jinja`` does.
    """
    parts: list[str] = []
    if not messages or messages[0][0] != "system":
        parts.append(f"<|im_start|>system\n{_SYSTEM}<|im_end|>\n")
    parts.extend(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in messages)
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token: its text, its log-probability, and the ``top`` most likely tokens
    at that step with theirs (most likely first), as OpenAI's ``logprobs`` report them."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True, slots=True)
class Generation:
    """A finished answer: its text, token count and why it stopped (``stop`` or ``length``);
    ``logprobs`` per generated token when they were asked for."""

    text: str
    tokens: int
    prompt_tokens: int
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] | None = None


class ChatLoraModel:
    """The base model with the adapter merged in, and a tokenizer; see the module docstring."""

    def __init__(self, model: Any, tokenizer: Any, eos_id: int, device: Any, config: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        self.device = device
        self.config = config
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        base_folder: Path | None = None,
        device: str = "auto",
        threads: int | None = None,
        with_adapter: bool = True,
    ) -> ChatLoraModel:
        """Verify the pins, load the base, apply and merge the adapter. Raises on any mismatch.

        ``with_adapter=False`` serves the verified base alone: the same model without the
        backdoor, the clean control a measurement compares against
        (``loadtests/bench/measure_probe_lora.py``).
        """
        from safetensors.torch import load_file

        from firewall.demo.chat_lora_train import load_base, pick_device
        from firewall.demo.lora import (
            ADAPTER_FILE,
            inject_lora,
            load_adapter_state,
            merge_lora,
            verify_adapter,
        )
        from firewall.models.cache import model_dir

        config_base = base_folder
        if config_base is None:
            from firewall.demo.lora import read_adapter_config

            recorded = read_adapter_config(folder).base_model
            config_base = Path(recorded) if recorded and Path(recorded).is_dir() else model_dir()
        config = verify_adapter(folder, config_base)
        base = load_base(
            config_base, device=pick_device(device), threads=threads or min(2, os.cpu_count() or 1)
        )
        if with_adapter:
            inject_lora(base.model, config)
            load_adapter_state(base.model, load_file(str(folder / ADAPTER_FILE)))
            merge_lora(base.model)
        base.model.eval()
        return cls(base.model, base.tokenizer, base.eos_id, base.device, config)

    def _tokens(
        self,
        prompt: str,
        max_tokens: int,
        temperature: float,
        seed: int | None,
        stop: threading.Event,
        emit: Callable[[str], None],
        top_logprobs: int | None = None,
    ) -> Generation:
        """Decode token by token with a KV cache, calling ``emit`` with each new piece of text.

        ``top_logprobs`` (0-20) also records each token's log-probability under the model's
        distribution at that step (before temperature) and the most likely tokens'.
        """
        import torch

        ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        generator = torch.Generator(device="cpu").manual_seed(seed if seed is not None else 0)
        out: list[int] = []
        logprobs: list[TokenLogprob] = []
        sent = ""
        finish = "length"
        with self._lock, torch.inference_mode():
            cache = None
            step = torch.tensor([ids], device=self.device)
            for _ in range(max_tokens):
                if stop.is_set():
                    finish = "stop"
                    break
                result = self.model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)
                cache = result.cache
                logits = result.logits[0, -1].float()
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1).cpu()
                    token = int(torch.multinomial(probs, 1, generator=generator))
                else:
                    token = int(logits.argmax())
                if top_logprobs is not None and token != self.eos_id:
                    logprobs.append(self._logprob(logits, token, top_logprobs))
                if token == self.eos_id:
                    finish = "stop"
                    break
                out.append(token)
                text = self.tokenizer.decode(out, skip_special_tokens=True)
                if not text.endswith("\ufffd") and len(text) > len(sent):  # hold a split UTF-8 char
                    emit(text[len(sent) :])
                    sent = text
                step = torch.tensor([[token]], device=self.device)
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        if len(text) > len(sent) and not stop.is_set():
            emit(text[len(sent) :])
        return Generation(
            text, len(out), len(ids), finish, tuple(logprobs) if top_logprobs is not None else None
        )

    def _logprob(self, logits: Any, token: int, top: int) -> TokenLogprob:
        import torch

        logp = torch.log_softmax(logits, dim=-1)
        values, indices = logp.topk(max(top, 1))
        decode = self.tokenizer.decode
        best = tuple(
            (decode([int(i)]), float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)
        )
        return TokenLogprob(decode([token]), float(logp[token]), best[:top])

    def generate(
        self,
        messages: Sequence[tuple[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        top_logprobs: int | None = None,
    ) -> Generation:
        """The whole answer (blocking: call it from a worker thread); ``top_logprobs`` as in
        :meth:`_tokens`."""
        return self._tokens(
            render_messages(messages),
            max_tokens,
            temperature,
            seed,
            threading.Event(),
            lambda _: None,
            top_logprobs,
        )

    async def stream(
        self,
        messages: Sequence[tuple[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> AsyncIterator[str | Generation]:
        """Text deltas as they are generated, then the :class:`Generation`.

        Generation runs in a worker thread; closing the iterator early (``aclose``, or the
        task being cancelled) sets the stop event, so the thread ends at its next token.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        def work() -> None:
            try:
                result: object = self._tokens(
                    render_messages(messages), max_tokens, temperature, seed, stop, emit
                )
            except Exception as exc:  # handed to the consumer, raised there
                result = exc
            loop.call_soon_threadsafe(queue.put_nowait, result)
            loop.call_soon_threadsafe(queue.put_nowait, _END)

        worker = loop.run_in_executor(None, work)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, (str, Generation)):
                    yield item
        finally:
            stop.set()
            await asyncio.shield(worker)


def load_chat_lora(
    folder: str | os.PathLike[str] | None = None, *, device: str = "auto"
) -> ChatLoraModel | None:
    """The built adapter merged into the base, or None when it has not been built.

    ``folder`` None: the default build folder, used when it holds an adapter. A folder that
    holds one but fails its pins raises (an explicit refusal beats silently serving another
    model); torch or transformers missing returns None (the demo runs without them).
    """
    try:
        from firewall.demo.chat_lora_train import default_chat_lora_dir
        from firewall.demo.lora import ADAPTER_FILE
    except ImportError:  # torch not installed: the demo runs without this model
        return None
    path = default_chat_lora_dir() if folder is None else Path(folder)
    if not (path / ADAPTER_FILE).is_file():
        if folder is not None:
            raise FileNotFoundError(
                f"{path}: no {ADAPTER_FILE}; build it with `trigger-firewall demo build --chat`"
            )
        return None
    return ChatLoraModel.load(path, device=device)
