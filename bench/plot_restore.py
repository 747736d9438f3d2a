"""The restore plot for docs/benchmarks.md from ``engine_vs_criu.py``'s before/after pairs.

    python bench/plot_restore.py docs/bench/engine_vs_criu-round3  # needs matplotlib

Reads ``<prefix>-{before,after}-<pair>.json`` for every pair found and writes
docs/img/restore-vs-criu.png: for each size, the restore to the first answered execute of the
code before and after, and raw CRIU's (the median of the raw runs next to each), each pair's
values as dots over the bar of their median, so the spread of a shared machine stays visible.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

IMG = Path(__file__).resolve().parents[1] / "docs" / "img" / "restore-vs-criu.png"
SERIES = (
    ("before", "jusnap_restore_to_execute", "Jusnap, before", "#bbbbbb"),
    ("after", "jusnap_restore_to_execute", "Jusnap, after", "#2b7bba"),
    ("after", "criu_restore_to_execute", "raw criu restore", "#e69f00"),
)


def pairs(prefix: Path) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
    """pair -> side -> size -> medians; only pairs with both sides and eager runs."""
    found: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    for after in sorted(prefix.parent.glob(f"{prefix.name}-after-*.json")):
        pair = after.stem.removeprefix(f"{prefix.name}-after-")
        before = after.with_name(f"{prefix.name}-before-{pair}.json")
        if not before.exists() or "lazy" in pair:
            continue
        found[pair] = {
            side: json.loads(path.read_text())["results"]
            for side, path in (("before", before), ("after", after))
        }
    return found


def main() -> int:
    prefix = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/bench/engine_vs_criu-round3")
    data = pairs(prefix)
    sizes = sorted(
        {size for sides in data.values() for size in sides["after"]},
        key=lambda s: float(s[:-1]) * (1024 if s.endswith("G") else 1),
    )
    fig, axes = plt.subplots(1, len(sizes), figsize=(4 * len(sizes), 4))
    for ax, size in zip(axes if len(sizes) > 1 else [axes], sizes, strict=True):
        n = 0
        for i, (side, key, label, color) in enumerate(SERIES):
            values = [
                sides[side][size][key]
                for sides in data.values()
                if size in sides[side] and key in sides[side][size]
            ]
            if not values:
                continue
            ax.bar(i, statistics.median(values), color=color, label=label)
            ax.plot([i] * len(values), values, "k.", alpha=0.6)
            n = max(n, len(values))
        ax.set_title(f"{size} kernel ({n} pair{'s' if n > 1 else ''})")
        ax.set_xticks([])
        ax.set_ylabel("seconds to the first answered execute")
    axes_list = axes if len(sizes) > 1 else [axes]
    axes_list[0].legend(loc="upper right", fontsize="small")
    fig.suptitle("Restore of the newest snapshot (--keep-newest), 2-core shared VM")
    fig.tight_layout()
    IMG.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG, dpi=100)
    print(IMG)
    return 0


if __name__ == "__main__":
    sys.exit(main())
