"""Reading which model answered, and the bounded table of the last answers (firewall.proxy.identity).

The proxy-level behaviour, a swap counted and audited on every way back, is in
tests/integration/test_upstream_identity.py.
"""

from __future__ import annotations

from firewall.proxy.identity import UpstreamIdentity, identity_fields, stream_identity


def test_fields_are_read_where_each_protocol_puts_them() -> None:
    watched = ("model", "system_fingerprint")
    assert identity_fields({"model": "a", "system_fingerprint": "f"}, watched) == {
        "model": "a",
        "system_fingerprint": "f",
    }
    # Responses' first stream event, Anthropic's message_start.
    assert identity_fields({"type": "response.created", "response": {"model": "r"}}, watched) == {
        "model": "r"
    }
    assert identity_fields({"type": "message_start", "message": {"model": "c"}}, watched) == {"model": "c"}
    assert identity_fields({"model": 3, "system_fingerprint": ""}, watched) == {}
    assert identity_fields(["model"], watched) == {}
    assert identity_fields({"model": "x" * 1000}, watched)["model"] == "x" * 200


def test_a_stream_head_is_read_only_from_whole_lines() -> None:
    watched = ("model",)
    assert stream_identity(b'data: {"model": "a", "choi', watched) is None  # unfinished line
    assert stream_identity(b': keep-alive\n\ndata: {bad\ndata: {"model": "a"}\n\n', watched) == {"model": "a"}
    assert stream_identity(b'{"model":"llama3","message":{}}\n', watched) == {"model": "llama3"}  # NDJSON


def test_the_table_is_bounded_and_keeps_what_is_in_use() -> None:
    table = UpstreamIdentity(max_keys=2)
    table.observe("chat_completions", "a", {"model": "A"})
    table.observe("chat_completions", "b", {"model": "B"})
    table.observe("chat_completions", "a", {"model": "A"})  # a is now the most recent
    table.observe("chat_completions", "c", {"model": "C"})  # drops b
    assert len(table) == 2
    assert table.observe("chat_completions", "a", {"model": "A2"})[0].before == "A"
    assert table.observe("chat_completions", "b", {"model": "B2"}) == []  # forgotten: a new baseline
