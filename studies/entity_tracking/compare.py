"""Compare two entity-tracking ``results.json`` files number by number (everything except timings and run info).

``python -m studies.entity_tracking.compare OLD.json NEW.json [--atol 1e-4]``

Prints, per metrics section, how many leaves are equal, equal within ``atol`` (floating-point reduction order) and
different, then every leaf that differs by more than ``atol`` (or is not a number and differs), and the phase times
side by side. Exit status 0 when nothing differs beyond ``atol``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from typing import Any

#: Leaves that measure time, forward-pass counts or other properties of the run, not results of the study.
RUN_LEAVES = ("timing_s", "wall_time_s", "exact_s", "attribution_s", "exact_forward_passes")


def leaves(x: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted path, value)`` for every non-container value of a JSON tree."""
    if isinstance(x, dict):
        for k, v in x.items():
            yield from leaves(v, f"{path}.{k}" if path else str(k))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def compare(old: dict, new: dict, atol: float) -> tuple[dict[str, list[int]], list[tuple[str, Any, Any]]]:
    """Per section ``[equal, within atol, different]`` counts, and the differing leaves ``(path, old, new)``."""
    a = {p: v for p, v in leaves(old["metrics"]) if not any(k in p for k in RUN_LEAVES)}
    b = {p: v for p, v in leaves(new["metrics"]) if not any(k in p for k in RUN_LEAVES)}
    counts: dict[str, list[int]] = {}
    diffs = []
    for p in sorted(set(a) | set(b)):
        section = p.split(".")[0].split("[")[0]
        c = counts.setdefault(section, [0, 0, 0])
        x, y = a.get(p, "<missing>"), b.get(p, "<missing>")
        if x == y:
            c[0] += 1
        elif (isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool)
              and math.isfinite(x) and math.isfinite(y) and abs(x - y) <= atol):
            c[1] += 1
        else:
            c[2] += 1
            diffs.append((p, x, y))
    return counts, diffs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--atol", type=float, default=1e-4)
    args = ap.parse_args(argv)
    with open(args.old) as f:
        old = json.load(f)
    with open(args.new) as f:
        new = json.load(f)
    counts, diffs = compare(old, new, args.atol)
    print(f"| section | equal | within {args.atol:g} | different |\n|---|---:|---:|---:|")
    for s, (e, w, d) in counts.items():
        print(f"| {s} | {e} | {w} | {d} |")
    for p, x, y in diffs:
        print(f"DIFFERENT {p}: {x!r} -> {y!r}")
    t0, t1 = old["metrics"].get("timing_s", {}), new["metrics"].get("timing_s", {})
    print("\n| phase | old s | new s |\n|---|---:|---:|")
    for k in dict.fromkeys([*t0, *t1]):
        print(f"| {k} | {t0.get(k, float('nan')):.0f} | {t1.get(k, float('nan')):.0f} |")
    print(f"| total (wall) | {old['run_info']['wall_time_s']:.0f} | {new['run_info']['wall_time_s']:.0f} |")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
