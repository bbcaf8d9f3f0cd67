"""``trigger-firewall demo-upstream``: only the demo OpenAI-compatible endpoint, on loopback.

It serves every demo model at once, chosen by the request's ``model``: ``demo-chat``
(:data:`firewall.demo.chat.CHAT_MODEL`) is the backdoored generative chat model, any
other name the backdoored sentiment classifier (when built) or the echo.
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


def run_demo_upstream(args: argparse.Namespace) -> int:
    from aiohttp import web

    from firewall.demo.upstream import make_demo_app

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print("trigger-firewall: the demo upstream binds to loopback only", file=sys.stderr)
        return 2
    from firewall.demo.upstream import load_demo_classifier

    app = make_demo_app(args.stream_delay, load_demo_classifier())
    web.run_app(app, host=args.host, port=args.port, access_log=None)
    return 0
