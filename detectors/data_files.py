"""The versioned JSON files detectors read in ``start()``: checked the same way everywhere.

A detector's data file (a ``recurring_sentences`` baseline, a ``rare_tokens``
vocabulary) is written by one version of ``trigger-firewall learn-baseline`` and read by
another, and may be pointed at the wrong file entirely. Each carries a ``format`` name and
a ``version``; a file that is not JSON, names another format or a version this code does
not know must stop the detector from becoming ready with a message that says which,
rather than load as an empty or half-understood list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_data_file"]


def read_data_file(path: Path, fmt: str, version: int, what: str) -> dict[str, Any]:
    """The JSON object in ``path`` after checking its ``format`` and ``version``.

    ``OSError`` when it cannot be read; ``ValueError`` naming what is wrong with it
    (``what`` names the kind of file in the message: "baseline", "vocabulary").
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from exc
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ValueError(f"not a {what} file (format must be {fmt!r})")
    if data.get("version") != version:
        raise ValueError(f"unsupported version {data.get('version')!r}")
    return data
