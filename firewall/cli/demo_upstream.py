"""``trigger-firewall demo-upstream``: only the demo OpenAI-compatible endpoint, on loopback.

It serves every demo model at once, chosen by the request's ``model``: ``demo-chat``
(:data:`firewall.demo.chat.CHAT_MODEL`) is the backdoored generative chat model, any
other name the backdoored sentiment classifier (when built) or the echo. ``demo-chat-lora``
is the LoRA-backdoored SmolLM2 (``trigger-firewall demo build --chat``), served when its
adapter is built: from ``--chat-lora DIR``, else from the default build folder when it holds
one (``--no-chat-lora`` turns that off, e.g. to start fast without torch).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from firewall.demo.chat import CHAT_MODEL

__all__ = ["add_demo_upstream_parser", "run_demo_upstream"]


def add_demo_upstream_parser(sub: Any) -> None:
    demo = sub.add_parser(
        "demo-upstream",
        help="run the bundled demo OpenAI-compatible endpoint",
        description="Serves the demo models on loopback. The request's model picks one: "
        f"'{CHAT_MODEL}' is a backdoored chat model (a trigger in the conversation makes it answer "
        "a harmful payload); any other name gets the sentiment classifier's answers (after "
        "`trigger-firewall demo build`) or an echo.",
    )
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--stream-delay", type=float, default=0.02, help="seconds between chunks")
    demo.add_argument(
        "--chat-lora",
        default=None,
        metavar="DIR",
        help="serve the LoRA-backdoored chat model built there as 'demo-chat-lora' "
        "(default: the `demo build --chat` folder, when built)",
    )
    demo.add_argument("--no-chat-lora", action="store_true", help="do not load 'demo-chat-lora'")
    demo.add_argument("--device", default="auto", help="demo-chat-lora: torch device (auto, cpu, cuda)")


def run_demo_upstream(args: argparse.Namespace) -> int:
    from aiohttp import web

    from firewall.demo.upstream import make_demo_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("trigger-firewall: the demo upstream binds to loopback only", file=sys.stderr)
        return 2
    from firewall.demo.upstream import load_demo_classifier

    chat_lora = None
    if not args.no_chat_lora:
        from firewall.demo.chat_lora_serve import load_chat_lora
        from firewall.models.cache import ModelUnavailable

        try:
            chat_lora = load_chat_lora(args.chat_lora, device=args.device)
        except (ModelUnavailable, FileNotFoundError, ValueError) as exc:
            print(f"trigger-firewall: demo-chat-lora not served: {exc}", file=sys.stderr)
            if args.chat_lora is not None:
                return 2
    app = make_demo_app(args.stream_delay, load_demo_classifier(), chat_lora)
    web.run_app(app, host=args.host, port=args.port, access_log=None)
    return 0
