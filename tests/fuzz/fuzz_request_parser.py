"""atheris fuzz target: request bodies through the proxy's parser and every protocol adapter.

Run it directly for as long as you like (libFuzzer flags apply)::

    .venv/bin/python tests/fuzz/fuzz_request_parser.py -runs=100000
    .venv/bin/python tests/fuzz/fuzz_request_parser.py -max_total_time=600 corpus/

The contract: parsing raises nothing but ``ProtocolError`` (which the proxy turns
into a 400); anything else is a crash libFuzzer reports with the input.
``tests/fuzz/test_fuzz.py`` runs it for a bounded number of iterations in CI.
"""

from __future__ import annotations

import sys

# Heavy dependencies load uninstrumented (coverage feedback is wanted for the parsers, and
# instrumenting pydantic and aiohttp costs many seconds of start-up).
import aiohttp  # noqa: F401
import atheris
import pydantic  # noqa: F401
import yaml  # noqa: F401

with atheris.instrument_imports(
    include=["firewall.protocols", "firewall.core.errors", "firewall.core.types"]
):
    from firewall.core.errors import ProtocolError
    from firewall.protocols.json_fields import JsonFieldsAdapter
    from firewall.protocols.openai import ChatAdapter, CompletionsAdapter, EmbeddingsAdapter, ResponsesAdapter

from firewall.proxy.handler import _parse_json

ADAPTERS = [
    ChatAdapter(),
    CompletionsAdapter(),
    ResponsesAdapter(),
    EmbeddingsAdapter(),
    JsonFieldsAdapter(["/inputs/*/data", "/text", "/*"], ["/outputs/*/data"]),
]


# Random bytes are rarely JSON; embedding them in API-shaped templates lets the fuzzer
# reach the adapters' branches without a seed corpus.
TEMPLATES = [
    b"%s",
    b'{"model": "m", "messages": [{"role": "user", "content": %s}]}',
    b'{"messages": [%s], "stream": true}',
    b'{"prompt": %s, "suffix": "s"}',
    b'{"input": %s, "instructions": "i"}',
    b'{"inputs": [{"data": %s}], "text": %s}',
]


def test_one_input(data: bytes) -> None:
    for template in TEMPLATES:
        check(template.replace(b"%s", data))


def check(data: bytes) -> None:
    try:
        body = _parse_json(data)
    except ProtocolError:
        return
    for adapter in ADAPTERS:
        try:
            segments = adapter.input_segments(body)
        except ProtocolError:
            continue
        for seg in segments:
            if not isinstance(seg.text, str):
                raise AssertionError(f"{adapter.name} produced a non-string segment")
        adapter.output_segments(body)
        adapter.model(body)
        adapter.wants_stream(body)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
