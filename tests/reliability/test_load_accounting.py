"""Every request accounted for, under every load scenario, in a few seconds.

The small version of ``loadtests/scenarios.py``: a real ``trigger-firewall serve``
process in front of the scenario upstream, all four scenarios at a tenth of
their size. The summary table lands in the terminal summary of the run.
"""

from __future__ import annotations

import pytest

from loadtests.scenarios import SCENARIOS, Scale, run_scenarios, running_stack, summary_table
from tests.reliability.conftest import LOAD_TABLES

pytestmark = pytest.mark.asyncio


async def test_every_request_is_answered_and_counted_under_load():
    async with running_stack() as stack:
        results = await run_scenarios(stack.proxy_url, stack.admin_url, list(SCENARIOS), Scale(0.1))
        assert stack.firewall.poll() is None, "the firewall died under load"
    table = summary_table(results)
    LOAD_TABLES.append("load accounting (loadtests/scenarios.py at scale 0.1):\n" + table)
    print(table)
    by_name = {r.name: r for r in results}
    for result in results:
        assert result.tally.lost == 0, result.tally.lost_examples
        assert result.unexpected == 0, dict(result.tally.classes)
        assert result.disagreements == [], result.disagreements
        assert result.tally.sent > 0
    # The scenarios exercised what they claim: every answer class showed up somewhere.
    steady = by_name["steady"].tally.classes
    for cls in ("answered", "blocked", "invalid", "too_large"):
        assert steady[cls] > 0, cls
    assert by_name["burst"].tally.classes["overloaded"] > 0
    assert by_name["burst"].tally.classes["answered"] > 0
    assert by_name["long_streams"].tally.classes["answered"] == by_name["long_streams"].tally.sent
    assert by_name["slow_clients"].tally.classes["blocked"] > 0
