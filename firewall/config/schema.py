"""Configuration: pydantic models, YAML loading, environment overrides, schema export.

One YAML document (``apiVersion: trigger-firewall.io/v1alpha1``, ``kind:
FirewallConfig``) describes the whole sidecar. Precedence is CLI flags >
``TRIGGER_FIREWALL_*`` environment variables > file > built-in defaults.
Environment keys use ``__`` between levels, e.g.
``TRIGGER_FIREWALL_UPSTREAM__URL`` or ``TRIGGER_FIREWALL_SERVER__ADMIN_PORT``.

Every model forbids unknown keys, so a typo fails ``check-config`` with the path
of the bad key instead of being silently ignored. Detector ``params`` are
validated by each detector's own model (see :func:`validate_detector_params`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import orjson
import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from firewall.core.errors import ConfigError
from firewall.core.types import Action, Mode, Phase

__all__ = [
    "API_VERSION",
    "AuditConfig",
    "DetectorConfig",
    "FirewallConfig",
    "RouteConfig",
    "ServerConfig",
    "StreamConfig",
    "UpstreamConfig",
    "config_hash",
    "load_config",
    "redacted",
]

API_VERSION: Final = "trigger-firewall.io/v1alpha1"
ENV_PREFIX = "TRIGGER_FIREWALL_"

Seconds = Annotated[float, Field(gt=0, le=86_400)]
Score = Annotated[float, Field(ge=0.0, le=1.0)]
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
UrlPath = Annotated[str, Field(pattern=r"^/")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Model):
    """Listen addresses and the limits that protect the sidecar itself."""

    host: str = "0.0.0.0"  # noqa: S104 - a sidecar proxy listens on the pod network
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port (tests).")
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(9090, ge=0, le=65535)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_response_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest non-streaming upstream body screened in memory."
    )
    max_concurrency: int = Field(512, ge=1, description="In-flight requests before answering 503.")
    inline_max_chars: int = Field(
        32_768,
        ge=0,
        description="Samples longer than this are scored by the cheap inline detectors in a worker "
        "thread instead of on the event loop, so one huge prompt cannot stall every other request.",
    )
    inline_budget_ms: float = Field(
        20.0,
        gt=0,
        le=10_000,
        description="The backstop behind inline_max_chars: an inline detector call that holds the event "
        "loop longer than this moves that detector's samples of half that call's size and more to a "
        "worker thread, for the life of the config (a reload starts over). Logged once per step.",
    )
    retry_after_seconds: int = Field(1, ge=0)
    drain_delay_seconds: float = Field(5.0, ge=0, le=600)
    shutdown_timeout_seconds: float = Field(
        120.0, ge=0, le=3600, description="How long in-flight requests (streams too) may drain."
    )


class UpstreamConfig(_Model):
    """The one model endpoint this sidecar protects. Never taken from the request."""

    url: AnyHttpUrl = AnyHttpUrl("http://127.0.0.1:8000")
    name: Name = "default"
    connect_timeout_seconds: Seconds = 5.0
    read_timeout_seconds: Seconds = Field(
        300.0, description="Longest silence between upstream bytes (time to headers included)."
    )
    max_connections: int = Field(256, ge=1)
    api_key_env: str | None = Field(
        None, description="Name of an environment variable whose value is sent as a Bearer token."
    )
    request_id_header: str | None = Field(
        "X-Request-Id",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$",
        description="Header that carries the firewall's request id (a UUID) upstream when the client "
        "sent none under that name; null sends none. A client's own well-formed X-Request-Id is "
        "forwarded as it is.",
    )
    watch_identity: tuple[Literal["model", "system_fingerprint"], ...] = Field(
        ("model", "system_fingerprint"),
        description="Fields of the upstream's answers whose change is counted "
        "(trigger_firewall_upstream_identity_changes_total), logged and audited, per route and "
        "requested model: a silent model swap is how a backdoored version arrives. Empty watches "
        "nothing; drop system_fingerprint for a provider whose fingerprint moves on its own.",
    )


class DetectorConfig(_Model):
    """One detector instance and how the policy treats its score."""

    name: Name
    type: str | None = Field(None, description="Registry type; defaults to the name.")
    enabled: bool = True
    phases: tuple[Phase, ...] | None = Field(
        None, description="Phases to run in; defaults to every phase the detector supports."
    )
    threshold: Score = 0.5
    action: Action = Action.BLOCK
    timeout_seconds: Seconds = 0.25
    on_error: Literal["fail_open", "fail_closed"] = "fail_open"
    required: bool = Field(True, description="/readyz waits for this detector to be ready.")
    gate: GateConfig | None = Field(
        None, description="Run only when another (cheap) detector scored at least min_score."
    )
    params: dict[str, Any] = Field(default_factory=dict)
    allowlist: tuple[str, ...] = Field(
        (),
        description="Regular expressions for known-good text (product names, internal token "
        "formats): evidence spans whose text falls inside a match are dropped, and a finding "
        "left with no evidence scores 0.",
    )

    @field_validator("allowlist")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return value

    @property
    def kind(self) -> str:
        return self.type or self.name


class GateConfig(_Model):
    """Run a detector only when a cheaper one flagged: ``detector``, or any of ``also``, scored
    ``min_score`` (by default, its own threshold)."""

    detector: Name
    min_score: Score | None = Field(
        None,
        description="The score a gate detector must reach; default: each gate detector's own threshold "
        "on the route (the gate opens on what that detector flags).",
    )
    also: tuple[Name, ...] = Field(
        (),
        description="More detectors whose score opens the gate: the detector runs when any of them "
        "(or `detector`) scored at least min_score, e.g. every suspicion detector for counterfactual.",
    )


class DetectorOverride(_Model):
    """Per-route changes to a detector's policy (never its params)."""

    enabled: bool | None = None
    threshold: Score | None = None
    action: Action | None = None
    on_error: Literal["fail_open", "fail_closed"] | None = None


class ModelOverride(_Model):
    """Changes for requests to one model on a route (matched on the body's ``model``)."""

    mode: Mode | None = None
    detectors: dict[str, DetectorOverride] = Field(default_factory=dict)


Protocol = Literal[
    "openai_chat",
    "openai_completions",
    "openai_responses",
    "openai_embeddings",
    "anthropic_messages",
    "ollama_chat",
    "ollama_generate",
    "ollama_embed",
    "tgi_generate",
    "llama_cpp_completion",
    "kserve_v2_infer",
    "triton_generate",
    "vllm_pooling",
    "json",
]


class RouteConfig(_Model):
    """A screened route: a path (``{param}`` segments allowed) and how to read its body.

    Protocol ``json`` reads the texts from the JSON pointers in ``input_fields`` and
    ``output_fields``; a ``*`` segment matches every array element or object member.
    """

    name: Name
    path: UrlPath
    aliases: tuple[UrlPath, ...] = Field(
        (),
        description="More paths served the same way (same name, adapter and policy), e.g. the "
        "unversioned and Azure forms of an OpenAI path.",
    )
    methods: tuple[str, ...] = ("POST",)
    protocol: Protocol = "json"
    mode: Mode | None = None
    screen_output: bool = True
    roles: tuple[str, ...] | None = Field(None, description="Roles to screen on input; all roles when unset.")
    token_ids: Literal["refuse", "forward_unscreened"] = Field(
        "refuse",
        description="Completion and embedding prompts given as token ids carry no text to screen: "
        "refuse them (400 unscreenable_input), or forward them unscreened (e.g. for embedding "
        "clients that tokenise, such as LangChain's OpenAIEmbeddings).",
    )
    input_fields: tuple[str, ...] = ()
    output_fields: tuple[str, ...] = ()
    detectors: dict[str, DetectorOverride] = Field(default_factory=dict)
    models: dict[str, ModelOverride] = Field(
        default_factory=dict,
        description="Per-model overrides of mode and detector policy, keyed by the request's model name; "
        "they apply on top of the route's.",
    )
    allowed_models: tuple[str, ...] | None = Field(
        None,
        description="Only requests naming one of these models (exact match) may use the route; any other, "
        "or none, is refused with 403 model_not_allowed, in enforce and monitor mode alike. A pinned "
        "deployment serves the models it vetted, not whatever name a client sends. null: any model.",
    )

    @field_validator("input_fields", "output_fields")
    @classmethod
    def _pointers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pointer in value:
            if pointer and not pointer.startswith("/"):
                raise ValueError(f"JSON pointer {pointer!r} must start with '/'")
        return value

    @model_validator(mode="after")
    def _json_needs_fields(self) -> RouteConfig:
        if self.protocol == "json" and not self.input_fields and not self.output_fields:
            raise ValueError("protocol 'json' needs input_fields and/or output_fields")
        return self


def _openai_paths(suffix: str) -> tuple[str, ...]:
    """Where OpenAI-compatible servers serve ``/v1/<suffix>`` besides there: without the
    version (vLLM, llama.cpp and LiteLLM accept both) and in Azure OpenAI's forms."""
    return (f"/{suffix}", f"/openai/v1/{suffix}", f"/openai/deployments/{{deployment}}/{suffix}")


#: (route name, path under /v1, protocol) of the built-in routes.
_OPENAI_ROUTES = (
    ("chat_completions", "chat/completions", "openai_chat"),
    ("completions", "completions", "openai_completions"),
    ("responses", "responses", "openai_responses"),
    ("embeddings", "embeddings", "openai_embeddings"),
)


#: (route name, path, aliases, protocol) of the built-in routes of the native serving APIs:
#: every request path those servers answer with a model's work on text.
_NATIVE_ROUTES: tuple[tuple[str, str, tuple[str, ...], Protocol], ...] = (
    # Anthropic's Messages API, which vLLM and llama.cpp's server also answer.
    ("messages", "/v1/messages", (), "anthropic_messages"),
    ("ollama_chat", "/api/chat", (), "ollama_chat"),
    ("ollama_generate", "/api/generate", (), "ollama_generate"),
    ("ollama_embed", "/api/embed", ("/api/embeddings",), "ollama_embed"),
    # TGI: "/" streams or not as the body says.
    ("tgi_generate", "/generate", ("/generate_stream", "/"), "tgi_generate"),
    ("llama_cpp_completion", "/completion", ("/infill",), "llama_cpp_completion"),
    (
        "kserve_infer",
        "/v2/models/{model}/infer",
        ("/v2/models/{model}/versions/{version}/infer",),
        "kserve_v2_infer",
    ),
    (
        "triton_generate",
        "/v2/models/{model}/generate",
        (
            "/v2/models/{model}/generate_stream",
            "/v2/models/{model}/versions/{version}/generate",
            "/v2/models/{model}/versions/{version}/generate_stream",
        ),
        "triton_generate",
    ),
    (
        "vllm_pooling",
        "/classify",
        (
            "/v1/classify",
            "/score",
            "/v1/score",
            "/rerank",
            "/v1/rerank",
            "/v2/rerank",
            "/pooling",
            "/v1/pooling",
        ),
        "vllm_pooling",
    ),
)


def default_routes() -> tuple[RouteConfig, ...]:
    openai = tuple(
        RouteConfig(name=name, path=f"/v1/{suffix}", aliases=_openai_paths(suffix), protocol=protocol)
        for name, suffix, protocol in _OPENAI_ROUTES
    )
    native = tuple(
        RouteConfig(name=name, path=path, aliases=aliases, protocol=protocol)
        for name, path, aliases, protocol in _NATIVE_ROUTES
    )
    return (*openai, *native)


def default_detectors() -> tuple[DetectorConfig, ...]:
    """The shipped defaults, in two tiers: block on proof, log on suspicion.

    *Proof* is evidence that is near-certain by construction. ``invisible_chars``
    blocks Unicode tag runs, bidirectional overrides, variation-selector runs and
    words that mix look-alike scripts, and ``sanitize``-s what carries no meaning
    for a model (zero-width and format characters, stray selectors, directional
    marks and embeddings): those are removed and the request is forwarded, because
    copy-paste from web pages puts them into real prompts.

    *Suspicion* is every per-request signal that an ordinary prompt can also give:
    a rare or made-up word (``rare_tokens``), a date line or deployment tag
    (``context_tags``), a sentence recurring across unrelated requests
    (``recurring_sentences``). Alone, each logs: on real chat traffic they flag a few
    percent of clean prompts (code questions, jargon, search-prompt templates), too
    many to refuse. Behaviour is what turns a suspicion into proof: ``counterfactual``
    runs only when one of them flags a request, takes each flagged span out and asks the
    protected model again (a few short probes, temperature 0), and blocks when the answer
    changes far more than when ordinary words of the same size are taken out. It probes
    every route with a text answer, each in its own API (a generic JSON or KServe route only
    when its params list it); on the others it sends nothing.

    Thresholds come from ``trigger-firewall eval`` (the project's suite): the lowest
    score that flags at most 1% of its clean texts. ``trigger-firewall eval --suite
    real-traffic`` measures the rates on real user prompts (README, "Real traffic").
    Calibrate on your own traffic with ``trigger-firewall calibrate``, and switch a
    suspicion detector to ``block`` only after watching its log.
    """
    return (
        DetectorConfig(name="invisible_chars", threshold=0.5, action=Action.SANITIZE),
        DetectorConfig(name="rare_tokens", threshold=0.69, action=Action.LOG),
        DetectorConfig(name="context_tags", threshold=0.7, action=Action.LOG),
        DetectorConfig(name="recurring_sentences", threshold=0.5, action=Action.LOG),
        # Proof by behaviour: what a suspicion detector flags is taken out and the model asked
        # again; blocked when its answer moves far more than when ordinary words are taken out.
        DetectorConfig(
            name="counterfactual",
            threshold=0.5,
            action=Action.BLOCK,
            timeout_seconds=15.0,
            on_error="fail_open",
            required=False,
            # Opens on what any suspicion detector flags (each at its own threshold above).
            gate=GateConfig(detector="rare_tokens", also=("context_tags", "recurring_sentences")),
            params={"min_suspect_score": 0.5},
        ),
    )


class StreamConfig(_Model):
    """How streamed (SSE) responses are screened when an output detector runs."""

    holdback_chars: int = Field(
        256, ge=0, description="Text kept back until this much later text has been scanned."
    )
    scan_every_chars: int = Field(
        64,
        ge=1,
        description="Screen at least every this many new characters, whatever scan_interval_ms says.",
    )
    scan_interval_ms: float = Field(
        0.0,
        ge=0,
        le=10_000,
        description="Screen at most this often while text arrives (the first words are screened at once); "
        "0 screens after every upstream read that adds text, so text goes out as the model writes it. "
        "Each pass rereads the text so far: raise it when output detectors are expensive.",
    )
    max_holdback_chars: int = Field(
        16384,
        ge=0,
        description="Upper bound on text held back per choice, whatever a detector asks for.",
    )
    block_style: Literal["content_filter", "error"] = "content_filter"


class BlockingConfig(_Model):
    """How blocks are reported to clients."""

    expose_reasons: bool = Field(
        False, description="Tell clients which detector blocked them (oracle risk: trusted callers only)."
    )
    response_style: Literal["error", "content_filter"] = Field(
        "error",
        description="Non-streaming output blocks: a 400 error, or a 200 with "
        "finish_reason 'content_filter' and the content withheld (Azure style).",
    )
    forward_while_proving: bool = Field(
        True,
        description="A request that opens a behavioural detector's gate (counterfactual) is sent "
        "upstream at once, beside its probes, and the answer (or stream) is held until their verdict: "
        "it waits for the longer of the two, not their sum. A block closes the upstream call. false: "
        "nothing is sent until the verdict, for upstreams where a request has effects (server-side "
        "tools, stored conversations).",
    )


class AuditConfig(_Model):
    """The JSON audit log: one line per screened request, no raw text by default."""

    enabled: bool = True
    destination: str = Field("stdout", description="'stdout', 'stderr' or a file path.")
    capture_text: bool = Field(False, description="Include the screened texts (sensitive).")
    hash_salt_env: str | None = Field(
        None, description="Environment variable holding a salt for prompt hashes (HMAC-SHA256)."
    )
    max_buffer_bytes: int = Field(8 * 1024 * 1024, ge=4096)
    log_allowed: bool = Field(True, description="Also log requests that were allowed.")


class ScoreLogConfig(_Model):
    """Shadow score collection: a sampled JSONL log of detector scores for ``calibrate``.

    One line per screened phase that is sampled: route, phase, mode, the config
    hash and every detector's score and status. No text unless ``include_text``.
    """

    enabled: bool = False
    destination: str = Field("trigger-firewall-scores.jsonl", description="File path (or stdout/stderr).")
    sample_rate: float = Field(0.1, ge=0.0, le=1.0, description="Share of screened requests logged.")
    modes: tuple[Mode, ...] = Field((Mode.MONITOR,), description="Route modes whose traffic is logged.")
    include_text: bool = Field(False, description="Include the screened texts (sensitive).")


class ReloadConfig(_Model):
    """Hot reload: SIGHUP always works; the file watcher is optional."""

    watch: bool = Field(True, description="Poll the config file and reload when it changes.")
    poll_seconds: float = Field(2.0, gt=0, le=3600)


class RoutingConfig(_Model):
    unknown_routes: Literal["deny_with_body", "deny", "passthrough"] = Field(
        "deny_with_body",
        description="Requests on no configured route: 'deny_with_body' answers 404 to any that carries "
        "a body (a prompt could be in it) and passes bodiless ones (GET /v1/models, health checks); "
        "'deny' answers 404 to all; 'passthrough' forwards all unscreened.",
    )
    passthrough_prefixes: tuple[UrlPath, ...] = Field(
        (),
        description="Path prefixes forwarded unscreened, bodies included, whatever unknown_routes says "
        "(e.g. /v1/files for uploads the model never reads as a prompt). Configured routes win.",
    )
    routes: tuple[RouteConfig, ...] = Field(default_factory=default_routes)

    @model_validator(mode="after")
    def _unique(self) -> RoutingConfig:
        names = [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"route names must be unique; repeated: {', '.join(dupes)}")
        return self


class FirewallConfig(_Model):
    """The whole sidecar configuration."""

    apiVersion: Literal["trigger-firewall.io/v1alpha1"] = API_VERSION
    kind: Literal["FirewallConfig"] = "FirewallConfig"
    mode: Mode = Mode.ENFORCE
    server: ServerConfig = Field(default_factory=ServerConfig)
    upstream: UpstreamConfig = Field(default_factory=UpstreamConfig)
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    detectors: tuple[DetectorConfig, ...] = Field(default_factory=default_detectors)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    blocking: BlockingConfig = Field(default_factory=BlockingConfig)
    reload: ReloadConfig = Field(default_factory=ReloadConfig)
    score_log: ScoreLogConfig = Field(default_factory=ScoreLogConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @model_validator(mode="after")
    def _cross_checks(self) -> FirewallConfig:
        names = [d.name for d in self.detectors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"detector names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        for det in self.detectors:
            if det.gate is not None:
                for gate in (det.gate.detector, *det.gate.also):
                    if gate not in known:
                        raise ValueError(f"detector {det.name!r}: gate names unknown detector {gate!r}")
                    if gate == det.name:
                        raise ValueError(f"detector {det.name!r} cannot gate on itself")
        for route in self.routing.routes:
            overrides = [(f"route {route.name!r}", route.detectors)] + [
                (f"route {route.name!r}, model {model!r}", m.detectors) for model, m in route.models.items()
            ]
            for where, mapping in overrides:
                for override in mapping:
                    if override not in known:
                        raise ValueError(f"{where}: override for unknown detector {override!r}")
        return self

    def detector(self, name: str) -> DetectorConfig:
        for det in self.detectors:
            if det.name == name:
                return det
        raise KeyError(name)


# Forward reference: DetectorConfig.gate refers to GateConfig, defined after it.
DetectorConfig.model_rebuild()


_USERINFO = re.compile(r"//[^/@\s]*@")


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"{source}: {error.error_count()} error(s)"]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(root)"
        if not item["loc"] or isinstance(item.get("input"), dict | list):
            lines.append(f"  {path}: {item['msg']}")  # never echo whole documents (they may hold secrets)
            continue
        shown = _USERINFO.sub("//***@", repr(item.get("input")))
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"  {path}: {item['msg']} (got {shown})")
    return "\n".join(lines)


class _Yaml12Loader(yaml.SafeLoader):
    """Safe loader with YAML 1.2 booleans: only true/false.

    YAML 1.1 reads ``off``, ``no``, ``on`` and ``yes`` as booleans, which turns
    ``mode: off`` into ``mode: False``.
    """


_Yaml12Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass


_INT_RE = re.compile(r"^-?\d+$")
_FLOAT_RE = re.compile(r"^-?\d+\.\d*$")


def _env_value(raw: str) -> Any:
    """Parse an environment value: numbers, booleans, JSON/YAML lists and maps, else the string."""
    if _INT_RE.match(raw):
        return int(raw)
    if _FLOAT_RE.match(raw):
        return float(raw)
    if raw[:1] in "[{" or raw in ("true", "false"):
        try:
            return load_yaml(raw)
        except yaml.YAMLError:
            return raw
    return raw


def env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``TRIGGER_FIREWALL_A__B=v`` variables into a nested mapping ``{a: {b: v}}``.

    Only variables whose first part names a config section or key are config;
    the others (``TRIGGER_FIREWALL_CONFIG``, ``..._CACHE_DIR``, ...) belong to
    other parts of the program and are left alone.
    """
    sections = set(FirewallConfig.model_fields)
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        if not parts or parts[0] not in sections:
            continue
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"environment variable {key} conflicts with another override")
            node = child
        node[parts[-1]] = _env_value(raw)
    return tree


def deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``override`` into a copy of ``base``; mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        current = out.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            out[key] = deep_merge(current, value)
        else:
            out[key] = value
    return out


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one YAML config file into a mapping, with errors that name the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {p}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {p}: {exc}") from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return data


def build_config(
    data: Mapping[str, Any], *, source: str = "config", validate_params: bool = True
) -> FirewallConfig:
    """Validate a raw mapping into a :class:`FirewallConfig`, raising :class:`ConfigError`."""
    try:
        config = FirewallConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from exc
    if validate_params:
        validate_detector_params(config, source=source)
    return config


def validate_detector_params(config: FirewallConfig, *, source: str = "config") -> None:
    """Check that every detector type exists and its ``params`` fit its own model."""
    from detectors import UnknownDetectorError, load_detector_class

    problems: list[str] = []
    for index, det in enumerate(config.detectors):
        where = f"detectors.{index}"
        try:
            cls = load_detector_class(det.kind)
        except UnknownDetectorError as exc:
            problems.append(f"  {where}.type: {exc}")
            continue
        except ImportError as exc:
            problems.append(f"  {where}.type: cannot import detector {det.kind!r}: {exc}")
            continue
        try:
            cls.parse_params(det.params)
        except ValidationError as exc:
            for item in exc.errors():
                path = ".".join(str(p) for p in item["loc"])
                problems.append(f"  {where}.params.{path}: {item['msg']} (got {item.get('input')!r})")
        if det.phases is not None:
            unsupported = [p.value for p in det.phases if p not in cls.phases]
            if unsupported:
                problems.append(f"  {where}.phases: {det.kind!r} does not support {', '.join(unsupported)}")
    if problems:
        raise ConfigError(f"{source}: {len(problems)} error(s)\n" + "\n".join(problems))


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> FirewallConfig:
    """Load file, then environment, then explicit (CLI) overrides, and validate.

    ``path`` defaults to ``$TRIGGER_FIREWALL_CONFIG``; with neither, the embedded
    defaults apply (enforce mode, the invisible-character detector blocking).
    """
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get(ENV_PREFIX + "CONFIG") or None
    data: dict[str, Any] = read_config_file(path) if path else {}
    data = deep_merge(data, env_overrides(env))
    if overrides:
        data = deep_merge(data, overrides)
    return build_config(data, source=str(path) if path else "defaults")


_SECRET_KEY = re.compile(r"(secret|password|token|api_key|apikey|credential)", re.IGNORECASE)


def redacted(config: FirewallConfig) -> dict[str, Any]:
    """The effective config as JSON-able data, secret-looking values masked.

    ``*_env`` keys hold variable *names*, not values, and are kept.
    """

    def walk(node: Any, key: str = "") -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, key) for v in node]
        if isinstance(node, str) and _SECRET_KEY.search(key) and not key.endswith("_env") and node:
            return "***"
        return node

    data = config.model_dump(mode="json")
    data["upstream"]["url"] = _USERINFO.sub("//***@", data["upstream"]["url"])
    result: dict[str, Any] = walk(data)
    return result


def config_hash(config: FirewallConfig) -> str:
    """A short, stable hash of the effective config (for the info metric and audit)."""
    blob = orjson.dumps(config.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(blob).hexdigest()[:16]


def json_schema() -> dict[str, Any]:
    """JSON Schema of the config file, for editors and Helm's values.schema.json."""
    schema: dict[str, Any] = FirewallConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "trigger-firewall FirewallConfig"
    return schema
