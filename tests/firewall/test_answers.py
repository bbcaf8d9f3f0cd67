"""How a blocking verdict is answered: by why it blocked and in which phase."""

from __future__ import annotations

import orjson
import pytest

from firewall.config.schema import build_config
from firewall.core.types import Action, BlockKind, Mode, Phase, Verdict
from firewall.proxy.answers import verdict_response


def blocking(kind: BlockKind, phase: Phase = Phase.INPUT) -> Verdict:
    return Verdict(
        phase=phase,
        mode=Mode.ENFORCE,
        action=Action.BLOCK,
        effective_action=Action.BLOCK,
        reason=f"{phase.value}.d.x",
        findings=(),
        fired=(),
        fail_open=(),
        block_kind=kind,
        thresholds={},
    )


@pytest.mark.parametrize(
    ("kind", "phase", "status", "code", "retry"),
    [
        (BlockKind.POLICY, Phase.INPUT, 400, "content_filter", "false"),
        (BlockKind.FAIL_CLOSED, Phase.INPUT, 503, "firewall_unavailable", "true"),
        (BlockKind.UNSCREENABLE, Phase.INPUT, 413, "too_long_to_screen", "false"),
        (BlockKind.UNSCREENABLE, Phase.OUTPUT, 502, "too_long_to_screen", "false"),
    ],
)
def test_each_kind_of_block_has_its_answer(
    kind: BlockKind, phase: Phase, status: int, code: str, retry: str
) -> None:
    config = build_config({"server": {"retry_after_seconds": 1}})
    response = verdict_response(blocking(kind, phase), config, request_id="r", param="messages")
    assert response.status == status
    assert response.headers["X-Should-Retry"] == retry
    assert response.body is not None
    assert orjson.loads(response.body)["error"]["code"] == code  # type: ignore[arg-type]
