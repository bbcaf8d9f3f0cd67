"""The shared upstream session keeps no cookies: one client's cookie never reaches another's request.

Every client's request goes upstream over one ``aiohttp.ClientSession``. With aiohttp's default
cookie jar, a ``Set-Cookie`` from the upstream (a load balancer's sticky cookie, a session) was
stored in that session and sent on every later request, whoever made it. The jar refuses
cookies from IP addresses, so a test against ``127.0.0.1`` never showed it; a Kubernetes
service name does. The upstream is reached here by a host name for that reason.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import chat_body, running_firewalls, serving

pytestmark = pytest.mark.asyncio


async def test_a_cookie_the_upstream_sets_goes_to_its_client_only(tmp_path: Path) -> None:
    seen: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        await request.read()
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}}]}
        resp = web.json_response(body)
        resp.set_cookie("session", f"user-{len(seen)}", domain=None)
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    async with serving(app) as base:
        by_name = base.replace("127.0.0.1", "localhost")
        async with running_firewalls(by_name, tmp_path) as start:
            fw = await start()
            for _ in range(3):
                body = orjson.dumps(chat_body("Capital of France?"))
                # a new client each time: no jar shared on the client side
                async with (
                    aiohttp.ClientSession() as client,
                    client.post(fw.url + "/v1/chat/completions", data=body) as resp,
                ):
                    assert resp.status == 200
                    # the client gets its own cookie, relayed as the upstream set it
                    assert resp.cookies["session"].value == f"user-{len(seen)}"
    assert seen == [None, None, None]
