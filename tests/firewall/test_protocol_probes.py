"""Asking a model again in its own API: editing a body by pointer, and each protocol's probe shape.

A probe must keep the request as the model would read it and take out only what could have
effects or cost: tools, streaming, storage, background runs, several answers, output formats
a short answer would break. The edit copies only the containers on the pointer's path, so the
client's body (and what is forwarded) never changes.
"""

from __future__ import annotations

import copy

import pytest

from firewall.core.json_pointer import replace_string
from firewall.protocols.anthropic import MessagesAdapter
from firewall.protocols.json_fields import JsonFieldsAdapter
from firewall.protocols.kserve import KServeInferAdapter
from firewall.protocols.llama_cpp import LlamaCppCompletionAdapter
from firewall.protocols.ollama import OllamaChatAdapter, OllamaGenerateAdapter
from firewall.protocols.openai import ResponsesAdapter
from firewall.protocols.tgi import TgiGenerateAdapter


def test_a_string_is_replaced_at_its_pointer_and_nothing_else_is_copied() -> None:
    tools = [{"name": "t", "input_schema": {"type": "object"}}]
    body = {"a/b": {"~x": ["one", "two"]}, "tools": tools}
    original = copy.deepcopy(body)
    edited = replace_string(body, "/a~1b/~0x/1", "two", "2")
    assert edited == {"a/b": {"~x": ["one", "2"]}, "tools": tools}
    assert body == original  # the original is never changed
    assert edited["tools"] is tools  # off the path: shared, not copied


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("/a/0", "not the text"),  # the text there is not the segment's
        ("/a/5", "x"),  # out of range
        ("/a/-1", "x"),
        ("/b", "x"),  # missing key
        ("/a", "x"),  # not a string
        ("a/0", "x"),  # not a pointer
        ("/a/0/deeper", "x"),
    ],
)
def test_a_pointer_that_does_not_name_the_text_edits_nothing(pointer: str, expected: str) -> None:
    assert replace_string({"a": ["x"]}, pointer, expected, "y") is None


def test_a_root_string_is_replaced() -> None:
    assert replace_string("whole", "", "whole", "part") == "part"


def test_every_adapter_that_knows_its_api_says_so() -> None:
    for adapter in (
        ResponsesAdapter(),
        MessagesAdapter(),
        OllamaChatAdapter(),
        OllamaGenerateAdapter(),
        TgiGenerateAdapter(),
        LlamaCppCompletionAdapter(),
    ):
        assert adapter.probe_safe, adapter.name
    for adapter in (
        KServeInferAdapter(),
        JsonFieldsAdapter(input_fields=("/text",), output_fields=("/out",)),
    ):
        assert not adapter.probe_safe
        body = {"text": "x", "stream": True}
        assert adapter.probe_body(body, 32, 0) is body  # an unknown API is resent as it is


def test_responses_probe() -> None:
    body = {
        "model": "m",
        "input": "hi",
        "tools": [{"type": "web_search"}],
        "stream": True,
        "store": True,
        "background": True,
        "conversation": "conv_1",
        "text": {"format": {"type": "json_schema", "strict": True}},
        "previous_response_id": "resp_1",
    }
    probe = ResponsesAdapter().probe_body(body, 32, 7)
    assert probe == {
        "model": "m",
        "input": "hi",
        "previous_response_id": "resp_1",
        "stream": False,
        "store": False,
        "max_output_tokens": 32,
        "temperature": 0,
    }
    assert body["tools"] == [{"type": "web_search"}]


def test_anthropic_probe() -> None:
    body = {"model": "c", "max_tokens": 4096, "tools": [], "thinking": {"type": "enabled"}, "messages": []}
    probe = MessagesAdapter().probe_body(body, 32, 0)
    assert probe == {"model": "c", "max_tokens": 32, "messages": [], "stream": False, "temperature": 0}


def test_ollama_probe_sets_options_and_turns_the_default_stream_off() -> None:
    body = {"model": "llama3", "messages": [], "tools": [{}], "format": "json", "options": {"num_ctx": 4096}}
    probe = OllamaChatAdapter().probe_body(body, 32, 3)
    assert probe == {
        "model": "llama3",
        "messages": [],
        "stream": False,
        "options": {"num_ctx": 4096, "num_predict": 32, "temperature": 0, "seed": 3},
    }
    assert body["options"] == {"num_ctx": 4096}
    assert OllamaGenerateAdapter().probe_body({"prompt": "p"}, 8, 0)["options"]["num_predict"] == 8


def test_tgi_probe_is_greedy_and_asks_the_one_answer_route() -> None:
    adapter = TgiGenerateAdapter()
    body = {"inputs": "x", "stream": True, "parameters": {"best_of": 2, "grammar": {}, "stop": ["\n"]}}
    probe = adapter.probe_body(body, 32, 0)
    assert probe == {
        "inputs": "x",
        "parameters": {"stop": ["\n"], "max_new_tokens": 32, "do_sample": False, "seed": 0},
    }
    assert adapter.probe_path("/generate_stream") == "/generate"
    assert adapter.probe_path("/generate_stream?x=1") == "/generate?x=1"
    assert adapter.probe_path("/") == "/"


def test_llama_cpp_probe() -> None:
    probe = LlamaCppCompletionAdapter().probe_body(
        {"prompt": "p", "grammar": "root ::= x", "stream": True}, 32, 0
    )
    assert probe == {"prompt": "p", "stream": False, "n_predict": 32, "temperature": 0, "seed": 0}


def test_a_probe_needs_an_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        MessagesAdapter().probe_body(["not", "an", "object"], 32, 0)


def test_the_answer_text_is_what_the_output_phase_reads() -> None:
    answer = {"content": [{"type": "text", "text": "Sentiment: positive."}]}
    assert MessagesAdapter().probe_text(answer) == "Sentiment: positive."
    kserve = {"outputs": [{"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}
    assert KServeInferAdapter().probe_text(kserve) == "a\nb"
