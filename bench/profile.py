"""A short summary of a py-spy speedscope profile: per thread, where the samples fall."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

_PLUMBING = (
    "_run_module_as_main", "_run_code", "<module>", "main", "Thread._bootstrap",
    "Thread._bootstrap_inner", "Thread.run", "_Prefetch._run",
)  # fmt: skip


def summarize(path: Path, top: int = 16) -> list[dict[str, Any]]:
    """Per thread: samples, the functions most often on the stack (inclusive share) and the
    lines most often at its top (self share)."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    out = []
    for profile in data["profiles"]:
        samples = profile["samples"]
        if not samples:
            continue
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        for stack in samples:
            if not stack:
                own["(idle)"] += 1
                continue
            names = []
            for index in stack:
                frame = frames[index]
                names.append(f"{frame['name']} ({Path(frame.get('file', '')).name})")
            for name in set(names):
                if name.split(" (")[0] not in _PLUMBING:
                    inclusive[name] += 1
            top_frame = frames[stack[-1]]
            own[
                f"{top_frame['name']} ({Path(top_frame.get('file', '')).name}:"
                f"{top_frame.get('line', '')})"
            ] += 1
        total = len(samples)
        out.append(
            {
                "thread": profile["name"].replace('""', '"main"'),
                "samples": total,
                "inclusive": [
                    (n, round(100 * c / total, 1)) for n, c in inclusive.most_common(top)
                ],
                "self": [(n, round(100 * c / total, 1)) for n, c in own.most_common(top)],
            }
        )
    return out
