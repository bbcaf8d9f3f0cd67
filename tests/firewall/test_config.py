"""Unit tests for firewall/config/schema.py: loading, validation, precedence, redaction, hashing."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from detectors import base as detector_base, load_detector_class
from firewall.config.schema import (
    API_VERSION,
    FirewallConfig,
    build_config,
    config_hash,
    env_overrides,
    json_schema,
    load_config,
    redacted,
)
from firewall.core.errors import ConfigError
from firewall.core.types import Action, Mode, Phase


def write_yaml(tmp_path: Path, text: str, name: str = "firewall.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(data: dict[str, Any], *, validate_params: bool = True) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(data, source="test.yaml", validate_params=validate_params)
    return str(info.value)


# --------------------------------------------------------------------------- defaults


def test_defaults_without_file_or_env() -> None:
    config = load_config(environ={})
    assert config.apiVersion == API_VERSION
    assert config.kind == "FirewallConfig"
    assert config.mode is Mode.ENFORCE
    assert [d.name for d in config.detectors] == [
        "invisible_chars",
        "rare_tokens",
        "context_tags",
        "recurring_sentences",
        "counterfactual",
    ]
    # Behaviour is proof: it blocks, runs only on suspicion, and an unreachable model fails open.
    cf = config.detector("counterfactual")
    assert cf.action is Action.BLOCK
    assert cf.on_error == "fail_open"
    assert not cf.required
    assert cf.gate is not None
    assert cf.gate.min_score is None
    assert {cf.gate.detector, *cf.gate.also} == {"rare_tokens", "context_tags", "recurring_sentences"}
    # Suspicion logs: an ordinary prompt can give each of these signals.
    assert config.detector("rare_tokens").action is Action.LOG
    assert config.detector("context_tags").action is Action.LOG
    assert config.detector("recurring_sentences").action is Action.LOG
    # Proof blocks; what carries no meaning is removed and the request forwarded.
    det = config.detector("invisible_chars")
    assert det.kind == "invisible_chars"
    assert det.enabled
    assert det.action is Action.SANITIZE
    assert det.threshold == 0.5
    assert det.on_error == "fail_open"
    assert [r.name for r in config.routing.routes] == [
        "chat_completions",
        "completions",
        "responses",
        "embeddings",
        "messages",
        "ollama_chat",
        "ollama_generate",
        "ollama_embed",
        "tgi_generate",
        "llama_cpp_completion",
        "kserve_infer",
        "triton_generate",
        "vllm_pooling",
    ]
    assert config.routing.unknown_routes == "deny_with_body"
    assert config.server.port == 8080
    assert config.audit.capture_text is False
    assert config.stream.block_style == "content_filter"


def test_the_written_out_defaults_are_the_defaults() -> None:
    # deploy/config/counterfactual.yaml names every knob of the defaults as a start for tuning,
    # and deploy/config/firewall.yaml is the sidecar's: neither may drift from the built-in ones.
    root = Path(__file__).resolve().parents[2] / "deploy" / "config"

    def resolved(config: FirewallConfig) -> list[dict[str, Any]]:
        # Params as the detector reads them: a value written out equal to its default is the same.
        return [
            {**d.model_dump(), "params": load_detector_class(d.kind).parse_params(d.params).model_dump()}
            for d in config.detectors
        ]

    builtin = resolved(load_config(environ={}))
    for name in ("counterfactual.yaml", "firewall.yaml"):
        assert resolved(load_config(root / name, environ={})) == builtin, name


def test_detector_lookup_unknown_name_raises_key_error() -> None:
    with pytest.raises(KeyError):
        load_config(environ={}).detector("nope")


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "")
    assert load_config(path, environ={}) == load_config(environ={})


# --------------------------------------------------------------------------- files


def test_yaml_file_is_loaded(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        apiVersion: trigger-firewall.io/v1alpha1
        kind: FirewallConfig
        mode: monitor
        server:
          port: 9999
          max_concurrency: 64
        upstream:
          url: http://vllm:8000
        detectors:
          - name: invisible_chars
            threshold: 0.7
            action: log
            on_error: fail_closed
            params:
              zero_width_min_run: 3
        routing:
          unknown_routes: deny
          routes:
            - name: classify
              path: /v2/models/{model}/infer
              protocol: json
              input_fields: [/inputs/*/data]
              detectors:
                invisible_chars: {threshold: 0.9}
        """,
    )
    config = load_config(path, environ={})
    assert config.mode is Mode.MONITOR
    assert config.server.port == 9999
    assert config.server.max_concurrency == 64
    assert str(config.upstream.url).startswith("http://vllm:8000")
    det = config.detector("invisible_chars")
    assert (det.threshold, det.action, det.on_error) == (0.7, Action.LOG, "fail_closed")
    assert det.params == {"zero_width_min_run": 3}
    assert config.routing.unknown_routes == "deny"
    (route,) = config.routing.routes
    assert route.input_fields == ("/inputs/*/data",)
    assert route.detectors["invisible_chars"].threshold == 0.9


def test_config_path_taken_from_environment(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "server: {port: 4242}\n")
    config = load_config(environ={"TRIGGER_FIREWALL_CONFIG": str(path)})
    assert config.server.port == 4242


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mode: off\n", Mode.OFF),
        ("mode: 'off'\n", Mode.OFF),
        ("mode: monitor\n", Mode.MONITOR),
    ],
)
def test_mode_values_in_yaml(tmp_path: Path, text: str, expected: Mode) -> None:
    # ``off`` is a documented mode; an unquoted ``off`` must not turn into YAML 1.1 ``false``.
    config = load_config(write_yaml(tmp_path, text), environ={})
    assert config.mode is expected


def test_route_mode_off_unquoted_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        routing:
          routes:
            - name: chat
              path: /v1/chat/completions
              protocol: openai_chat
              mode: off
        """,
    )
    (route,) = load_config(path, environ={}).routing.routes
    assert route.mode is Mode.OFF


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"not found.*nope\.yaml"):
        load_config(missing, environ={})


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "server: [unclosed\n", name="broken.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "broken.yaml" in message
    assert "invalid YAML" in message


@pytest.mark.parametrize(("text", "type_name"), [("- a\n- b\n", "list"), ("just a string\n", "str")])
def test_non_mapping_top_level_names_the_file(tmp_path: Path, text: str, type_name: str) -> None:
    path = write_yaml(tmp_path, text, name="top.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert "top.yaml" in message
    assert "mapping" in message
    assert type_name in message


def test_validation_error_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "server: {prot: 1}\n", name="typo.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    message = str(info.value)
    assert message.startswith(str(path))
    assert "server.prot" in message


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"server": {"prot": 8080}}, "server.prot"),
        ({"bogus": 1}, "bogus"),
        ({"upstream": {"uri": "http://x"}}, "upstream.uri"),
        ({"detectors": [{"name": "invisible_chars", "treshold": 0.5}]}, "detectors.0.treshold"),
        ({"stream": {"holdback": 10}}, "stream.holdback"),
        ({"audit": {"capture": True}}, "audit.capture"),
        (
            {"routing": {"routes": [{"name": "c", "path": "/c", "protocol": "openai_chat", "modes": "x"}]}},
            "routing.routes.0.modes",
        ),
        (
            {
                "routing": {
                    "routes": [
                        {
                            "name": "c",
                            "path": "/c",
                            "protocol": "openai_chat",
                            "detectors": {"invisible_chars": {"params": {}}},
                        }
                    ]
                }
            },
            "routing.routes.0.detectors.invisible_chars.params",
        ),
    ],
)
def test_unknown_keys_rejected_with_path(data: dict[str, Any], path: str) -> None:
    message = config_error(data)
    assert f"{path}:" in message
    assert "Extra inputs are not permitted" in message


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"detectors": [{"name": "invisible_chars", "threshold": 1.5}]}, "detectors.0.threshold"),
        ({"detectors": [{"name": "invisible_chars", "threshold": -0.1}]}, "detectors.0.threshold"),
        ({"detectors": [{"name": "invisible_chars", "timeout_seconds": -1}]}, "detectors.0.timeout_seconds"),
        ({"detectors": [{"name": "invisible_chars", "timeout_seconds": 0}]}, "detectors.0.timeout_seconds"),
        ({"detectors": [{"name": "invisible_chars", "action": "drop"}]}, "detectors.0.action"),
        ({"detectors": [{"name": "invisible_chars", "on_error": "retry"}]}, "detectors.0.on_error"),
        ({"detectors": [{"name": "Invisible-Chars"}]}, "detectors.0.name"),
        ({"server": {"port": -1}}, "server.port"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"admin_port": -1}}, "server.admin_port"),
        ({"server": {"drain_delay_seconds": -1}}, "server.drain_delay_seconds"),
        ({"server": {"max_request_bytes": 10}}, "server.max_request_bytes"),
        ({"upstream": {"connect_timeout_seconds": -5}}, "upstream.connect_timeout_seconds"),
        ({"upstream": {"read_timeout_seconds": -0.5}}, "upstream.read_timeout_seconds"),
        ({"upstream": {"read_timeout_seconds": 100_000}}, "upstream.read_timeout_seconds"),
        ({"upstream": {"url": "ftp://host"}}, "upstream.url"),
        ({"mode": "shadow"}, "mode"),
        ({"apiVersion": "v2"}, "apiVersion"),
        ({"stream": {"scan_every_chars": 0}}, "stream.scan_every_chars"),
        ({"stream": {"block_style": "drop"}}, "stream.block_style"),
        (
            {
                "routing": {
                    "routes": [
                        {
                            "name": "c",
                            "path": "/c",
                            "protocol": "openai_chat",
                            "detectors": {"invisible_chars": {"threshold": 1.5}},
                        }
                    ]
                }
            },
            "routing.routes.0.detectors.invisible_chars.threshold",
        ),
        (
            {"routing": {"routes": [{"name": "c", "path": "no-slash", "protocol": "openai_chat"}]}},
            "routing.routes.0.path",
        ),
        (
            {"routing": {"routes": [{"name": "c", "path": "/c", "protocol": "grpc"}]}},
            "routing.routes.0.protocol",
        ),
    ],
)
def test_bad_values_rejected_with_path(data: dict[str, Any], path: str) -> None:
    message = config_error(data)
    assert f"  {path}:" in message


def test_port_zero_means_any_free_port() -> None:
    config = build_config({"server": {"port": 0, "admin_port": 0}})
    assert (config.server.port, config.server.admin_port) == (0, 0)


def test_every_problem_is_reported_at_once() -> None:
    message = config_error({"server": {"port": -1, "prot": 1}, "upstream": {"connect_timeout_seconds": -1}})
    assert "3 error(s)" in message
    for path in ("server.port", "server.prot", "upstream.connect_timeout_seconds"):
        assert path in message


def test_unknown_detector_type() -> None:
    message = config_error({"detectors": [{"name": "invisible_chars"}, {"name": "magic", "type": "nope"}]})
    assert "detectors.1.type" in message
    assert "'nope'" in message


def test_unknown_detector_type_defaults_to_name() -> None:
    message = config_error({"detectors": [{"name": "no_such_detector"}]})
    assert "detectors.0.type" in message
    assert "no_such_detector" in message


def test_unknown_detector_type_accepted_when_params_not_validated() -> None:
    config = build_config({"detectors": [{"name": "magic"}]}, validate_params=False)
    assert config.detector("magic").kind == "magic"


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"nonexistent": 1}, "detectors.0.params.nonexistent"),
        ({"zero_width_min_run": 0}, "detectors.0.params.zero_width_min_run"),
        ({"categories": ["not_a_category"]}, "detectors.0.params.categories"),
    ],
)
def test_bad_detector_params(params: dict[str, Any], path: str) -> None:
    message = config_error({"detectors": [{"name": "invisible_chars", "params": params}]})
    assert path in message


def test_good_detector_params_accepted() -> None:
    config = build_config({"detectors": [{"name": "invisible_chars", "params": {"zero_width_min_run": 4}}]})
    assert config.detector("invisible_chars").params == {"zero_width_min_run": 4}


def test_second_instance_of_a_type_with_its_own_params() -> None:
    config = build_config(
        {
            "detectors": [
                {"name": "invisible_chars"},
                {"name": "strict_invisible", "type": "invisible_chars", "params": {"zero_width_min_run": 1}},
            ]
        }
    )
    assert config.detector("strict_invisible").kind == "invisible_chars"
    message = config_error(
        {
            "detectors": [
                {"name": "invisible_chars"},
                {"name": "strict_invisible", "type": "invisible_chars", "params": {"bogus": 1}},
            ]
        }
    )
    assert "detectors.1.params.bogus" in message


class _InputOnly(detector_base.Detector):
    kind = "test_input_only"
    phases = frozenset({Phase.INPUT})

    async def score(self, batch):
        return [detector_base.Finding(self.name, 0.0) for _ in batch]


def test_phase_the_detector_does_not_support(monkeypatch: pytest.MonkeyPatch) -> None:
    import detectors

    monkeypatch.setitem(detectors._REGISTERED, "test_input_only", _InputOnly)
    ok = build_config({"detectors": [{"name": "only_in", "type": "test_input_only", "phases": ["input"]}]})
    assert ok.detector("only_in").phases == (Phase.INPUT,)
    message = config_error(
        {"detectors": [{"name": "only_in", "type": "test_input_only", "phases": ["input", "output"]}]}
    )
    assert "detectors.0.phases" in message
    assert "output" in message


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (
            {
                "detectors": [
                    {"name": "invisible_chars"},
                    {
                        "name": "heavy",
                        "type": "invisible_chars",
                        "gate": {"detector": "ghost", "min_score": 0.3},
                    },
                ]
            },
            "gate names unknown detector 'ghost'",
        ),
        (
            {
                "detectors": [
                    {"name": "invisible_chars", "gate": {"detector": "invisible_chars", "min_score": 0.3}}
                ]
            },
            "cannot gate on itself",
        ),
        (
            {"detectors": [{"name": "invisible_chars"}, {"name": "invisible_chars", "threshold": 0.9}]},
            "detector names must be unique; repeated: invisible_chars",
        ),
        (
            {
                "routing": {
                    "routes": [
                        {"name": "a", "path": "/a", "protocol": "openai_chat"},
                        {"name": "a", "path": "/b", "protocol": "openai_chat"},
                    ]
                }
            },
            "route names must be unique; repeated: a",
        ),
        (
            {
                "routing": {
                    "routes": [
                        {
                            "name": "chat",
                            "path": "/v1/chat/completions",
                            "protocol": "openai_chat",
                            "detectors": {"ghost": {"threshold": 0.1}},
                        }
                    ]
                }
            },
            "route 'chat': override for unknown detector 'ghost'",
        ),
        (
            {"routing": {"routes": [{"name": "raw", "path": "/raw", "protocol": "json"}]}},
            "protocol 'json' needs input_fields and/or output_fields",
        ),
        (
            {"routing": {"routes": [{"name": "raw", "path": "/raw", "input_fields": ["inputs/0"]}]}},
            "must start with '/'",
        ),
        (
            {"detectors": [{"name": "invisible_chars", "gate": {"detector": "x", "min_score": 2}}]},
            "detectors.0.gate.min_score",
        ),
    ],
)
def test_cross_checks(data: dict[str, Any], fragment: str) -> None:
    assert fragment in config_error(data)


@pytest.mark.parametrize(
    "fields",
    [{"input_fields": ["/text"]}, {"output_fields": ["/generated_text"]}],
)
def test_json_route_with_either_field_list_is_valid(fields: dict[str, Any]) -> None:
    config = build_config({"routing": {"routes": [{"name": "raw", "path": "/raw", **fields}]}})
    assert config.routing.routes[0].protocol == "json"


def test_config_is_immutable() -> None:
    config = load_config(environ={})
    with pytest.raises(ValueError, match="frozen"):
        config.server.port = 1  # type: ignore[misc]


# --------------------------------------------------------------------------- environment


def test_env_overrides_upstream_url_and_port() -> None:
    config = load_config(
        environ={
            "TRIGGER_FIREWALL_UPSTREAM__URL": "http://model.internal:9000/v1",
            "TRIGGER_FIREWALL_SERVER__PORT": "8181",
            "TRIGGER_FIREWALL_SERVER__ADMIN_PORT": "0",
        }
    )
    assert str(config.upstream.url) == "http://model.internal:9000/v1"
    assert config.server.port == 8181
    assert config.server.admin_port == 0


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"TRIGGER_FIREWALL_SERVER__PORT": "8081"}, {"server": {"port": 8081}}),
        ({"TRIGGER_FIREWALL_AUDIT__CAPTURE_TEXT": "true"}, {"audit": {"capture_text": True}}),
        ({"TRIGGER_FIREWALL_SERVER__DRAIN_DELAY_SECONDS": "2.5"}, {"server": {"drain_delay_seconds": 2.5}}),
        ({"TRIGGER_FIREWALL_MODE": "monitor"}, {"mode": "monitor"}),
        ({"TRIGGER_FIREWALL_MODE": "off"}, {"mode": "off"}),
        (
            {"TRIGGER_FIREWALL_DETECTORS": '[{"name": "invisible_chars"}]'},
            {"detectors": [{"name": "invisible_chars"}]},
        ),
        ({"TRIGGER_FIREWALL_ROUTING__ROUTES": "[]"}, {"routing": {"routes": []}}),
        ({"TRIGGER_FIREWALL_UPSTREAM__URL": "http://h:1"}, {"upstream": {"url": "http://h:1"}}),
        ({"TRIGGER_FIREWALL_CONFIG": "/etc/x.yaml"}, {}),
        ({"PATH": "/usr/bin", "TRIGGER_FIREWALLX": "1", "TRIGGER_FIREWALL_": "1"}, {}),
    ],
)
def test_env_overrides_parsing(environ: dict[str, str], expected: dict[str, Any]) -> None:
    assert env_overrides(environ) == expected


def test_env_integers_are_decimal() -> None:
    # A leading zero must not make an environment value octal (YAML 1.1 reads 0100 as 64).
    config = load_config(environ={"TRIGGER_FIREWALL_SERVER__MAX_CONCURRENCY": "0100"})
    assert config.server.max_concurrency == 100


def test_env_bad_value_reports_path() -> None:
    with pytest.raises(ConfigError, match=r"server\.port"):
        load_config(environ={"TRIGGER_FIREWALL_SERVER__PORT": "70000"})


def test_env_unknown_key_reports_path() -> None:
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_config(environ={"TRIGGER_FIREWALL_SERVER__PROT": "80"})


@pytest.mark.parametrize(
    "environ",
    [
        {"TRIGGER_FIREWALL_SERVER": "1", "TRIGGER_FIREWALL_SERVER__PORT": "2"},
        {"TRIGGER_FIREWALL_SERVER__PORT": "2", "TRIGGER_FIREWALL_SERVER": "1"},
    ],
)
def test_env_conflicting_levels_fail_whatever_the_order(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        load_config(environ=environ)


# --------------------------------------------------------------------------- precedence


@pytest.fixture
def port_file(tmp_path: Path) -> Path:
    return write_yaml(tmp_path, "server:\n  port: 1111\n  host: 10.0.0.1\n")


@pytest.mark.parametrize(
    ("use_env", "overrides", "expected_port"),
    [
        (False, None, 1111),
        (True, None, 2222),
        (False, {"server": {"port": 3333}}, 3333),
        (True, {"server": {"port": 3333}}, 3333),
    ],
)
def test_precedence_overrides_then_env_then_file(
    port_file: Path, use_env: bool, overrides: dict[str, Any] | None, expected_port: int
) -> None:
    environ = {"TRIGGER_FIREWALL_SERVER__PORT": "2222"} if use_env else {}
    config = load_config(port_file, environ=environ, overrides=overrides)
    assert config.server.port == expected_port
    # Merging is per key: the file's host survives overrides of a sibling key.
    assert config.server.host == "10.0.0.1"


def test_precedence_over_defaults() -> None:
    assert load_config(environ={}).server.port == 8080
    assert load_config(environ={}, overrides={"server": {"port": 1}}).server.port == 1


def test_override_replaces_lists_instead_of_merging(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
        detectors:
          - {name: invisible_chars, threshold: 0.6}
          - {name: second, type: invisible_chars}
        """,
    )
    config = load_config(
        path, environ={}, overrides={"detectors": [{"name": "invisible_chars", "threshold": 0.9}]}
    )
    assert [(d.name, d.threshold) for d in config.detectors] == [("invisible_chars", 0.9)]


# --------------------------------------------------------------------------- redaction


def test_redacted_masks_upstream_userinfo() -> None:
    config = load_config(environ={}, overrides={"upstream": {"url": "http://user:hunter2@host:81/v1"}})
    shown = redacted(config)
    assert shown["upstream"]["url"] == "http://***@host:81/v1"
    blob = orjson.dumps(shown).decode()
    assert "hunter2" not in blob
    assert "user:" not in blob


def test_redacted_keeps_plain_url_and_env_names() -> None:
    config = load_config(
        environ={},
        overrides={"upstream": {"url": "http://host:81/v1", "api_key_env": "OPENAI_API_KEY"}},
    )
    shown = redacted(config)
    assert shown["upstream"]["url"] == "http://host:81/v1"
    assert shown["upstream"]["api_key_env"] == "OPENAI_API_KEY"


def test_redacted_masks_secret_looking_keys() -> None:
    config = build_config(
        {
            "detectors": [
                {
                    "name": "remote",
                    "params": {
                        "api_token": "tok-123",
                        "password": "pw-456",
                        "client_secret": ["s-789"],
                        "token_env": "REMOTE_TOKEN",
                        "endpoint": "http://scorer",
                    },
                }
            ]
        },
        validate_params=False,
    )
    params = redacted(config)["detectors"][0]["params"]
    assert params["api_token"] == "***"
    assert params["password"] == "***"
    assert params["client_secret"] == ["***"]
    assert params["token_env"] == "REMOTE_TOKEN"
    assert params["endpoint"] == "http://scorer"
    blob = orjson.dumps(redacted(config)).decode()
    for secret in ("tok-123", "pw-456", "s-789"):
        assert secret not in blob


def test_redacted_is_json_and_does_not_touch_the_config() -> None:
    config = load_config(environ={}, overrides={"upstream": {"url": "http://u:p@h/"}})
    orjson.dumps(redacted(config))
    assert config.upstream.url.password == "p"


def test_validation_errors_do_not_echo_upstream_password() -> None:
    # A model-level error (here an unknown gate) reports against the root; the message
    # must not print the raw document, which holds the upstream credentials.
    message = config_error(
        {
            "upstream": {"url": "http://user:hunter2@host/"},
            "detectors": [{"name": "a", "gate": {"detector": "ghost", "min_score": 0.1}}],
        },
        validate_params=False,
    )
    assert "ghost" in message
    assert "hunter2" not in message


# --------------------------------------------------------------------------- hash and schema


def test_config_hash_is_stable() -> None:
    a = load_config(environ={})
    b = load_config(environ={})
    assert config_hash(a) == config_hash(b)
    assert len(config_hash(a)) == 16
    int(config_hash(a), 16)


@pytest.mark.parametrize(
    "overrides",
    [
        {"server": {"port": 8081}},
        {"mode": "monitor"},
        {"detectors": [{"name": "invisible_chars", "threshold": 0.6}]},
        {"upstream": {"url": "http://other:8000"}},
    ],
)
def test_config_hash_changes_with_config(overrides: dict[str, Any]) -> None:
    base = config_hash(load_config(environ={}))
    assert config_hash(load_config(environ={}, overrides=overrides)) != base


def test_config_hash_ignores_how_the_config_was_given(tmp_path: Path) -> None:
    from_file = load_config(write_yaml(tmp_path, "server: {port: 8081}\n"), environ={})
    from_env = load_config(environ={"TRIGGER_FIREWALL_SERVER__PORT": "8081"})
    assert config_hash(from_file) == config_hash(from_env)


def test_json_schema_shape() -> None:
    schema = json_schema()
    orjson.dumps(schema)  # serialisable as JSON
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["type"] == "object"
    props = schema["properties"]
    for key in ("server", "upstream", "routing", "detectors", "stream", "audit", "mode"):
        assert key in props
    assert schema.get("additionalProperties") is False
    assert "$defs" in schema
    assert "ServerConfig" in schema["$defs"]
    assert schema["$defs"]["ServerConfig"]["properties"]["port"]["maximum"] == 65535


def test_environment_variables_of_other_components_are_not_config() -> None:
    env = {
        "TRIGGER_FIREWALL_CACHE_DIR": "/var/cache/models",
        "TRIGGER_FIREWALL_DEMO_MODEL": "/var/cache/demo",
        "TRIGGER_FIREWALL_MODE": "monitor",
    }
    config = load_config(environ=env)
    assert config.mode is Mode.MONITOR


def test_the_readme_configuration_reference_loads() -> None:
    # The README's annotated config is what users copy: it must be a config that loads.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("```yaml", readme.index("## Configuration reference")) + len("```yaml")
    block = readme[start : readme.index("```", start)]
    config = build_config(yaml.safe_load(block))
    assert "sagemaker" in [r.name for r in config.routing.routes]


def test_a_gate_may_name_several_detectors_each_known_and_none_itself() -> None:
    base = [{"name": "rare_tokens"}, {"name": "context_tags"}]
    gated = {"name": "counterfactual", "gate": {"detector": "rare_tokens", "min_score": 0.5}}
    ok = build_config({"detectors": [*base, {**gated, "gate": {**gated["gate"], "also": ["context_tags"]}}]})
    assert ok.detector("counterfactual").gate.also == ("context_tags",)
    for also, message in ((["nope"], "unknown detector 'nope'"), (["counterfactual"], "gate on itself")):
        with pytest.raises(ConfigError, match=message):
            build_config({"detectors": [*base, {**gated, "gate": {**gated["gate"], "also": also}}]})
