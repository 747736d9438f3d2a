"""Plots and the Markdown table for docs/storage.md from ``run.py``'s results.

    /var/tmp/jusnap-bench/venv/bin/python bench/storage/plot.py bench/storage/results.json

Writes docs/img/storage-{bytes,overhead,restore}.png and prints the table.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SYSTEMS = ["jusnap", "criu", "dill", "kishu"]
NAMES = {"jusnap": "Jusnap", "criu": "raw CRIU", "dill": "dill", "kishu": "Kishu"}
COLORS = {"jusnap": "#2b7bba", "criu": "#999999", "dill": "#e69f00", "kishu": "#009e73"}
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def index(results: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["workload"], r["system"]): r for r in results}


def overhead(r: dict[str, Any], base: dict[str, Any] | None) -> float | None:
    """Seconds per cell the user waits for, on top of the cell itself.

    Jusnap and raw CRIU: the freeze (the autosnap extension asks in the background; the commit
    to the store runs while the kernel works on). dill: the dump cell. Kishu: cell time with
    its hooks minus the same cell without.
    """
    cells = r.get("cells") or []
    if not cells:
        return None
    if r["system"] in ("jusnap", "criu", "dill"):
        vals = [c.get("freeze_s") for c in cells]
        vals = [v for v in vals if v is not None]
        return statistics.mean(vals) if vals else None
    if base is None or not base.get("cells"):
        return None
    diffs = [c["cell_s"] - b["cell_s"] for c, b in zip(cells, base["cells"], strict=False)]
    return max(0.0, statistics.mean(diffs))


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def fmt_s(v: float | None) -> str:
    return "–" if v is None else (f"{v * 1000:.0f} ms" if v < 1 else f"{v:.2f} s")


def table(data: dict[str, Any]) -> str:
    by = index(data["results"])
    workloads = list(dict.fromkeys(r["workload"] for r in data["results"]))
    lines = [
        "| workload | system | per-cell overhead | freeze / snapshot | snapshot call"
        " | on disk (session) | added per later snapshot | restore early | restore latest"
        " | objects working |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in workloads:
        base = by.get((w, "none"))
        for s in SYSTEMS:
            r = by.get((w, s))
            if r is None:
                continue
            if "error" in r:
                lines.append(f"| {w} | {NAMES[s]} | failed: {r['error'][:60]} | | | | | | | |")
                continue
            cells = r.get("cells", [])
            n = len(cells)
            freezes = [c["freeze_s"] for c in cells if c.get("freeze_s") is not None]
            calls = [c["snapshot_s"] for c in cells if c.get("snapshot_s") is not None]
            errs = sum(1 for c in cells if "error" in c)
            disk = r.get("disk_bytes")
            ver = r.get("verify") or {}
            ok = sum(1 for v in ver.values() if v)
            works = f"{ok}/{len(ver)}" if ver else "0 (restore failed)"
            rs = r.get("restore", {})
            later = [c.get("new_bytes") for c in cells[1:] if c.get("new_bytes") is not None]
            if later:  # what one more snapshot adds, median over the cells after the first
                per = fmt_bytes(statistics.median(later))
            elif disk and n > errs:
                per = fmt_bytes(disk / (n - errs)) + " (avg.)"
            else:
                per = "–"
            lines.append(
                f"| {w} | {NAMES[s]} | {fmt_s(overhead(r, base))}"
                f" | {fmt_s(statistics.median(freezes)) if freezes else '–'}"
                f" | {fmt_s(statistics.median(calls)) if calls else '–'}"
                f" | {fmt_bytes(disk)}{f' ({errs} of {n} snapshots failed)' if errs else ''}"
                f" | {per}"
                f" | {fmt_s(rs.get('early'))} | {fmt_s(rs.get('latest'))} | {works} |"
            )
    return "\n".join(lines)


def bars(data: dict[str, Any], metric: str, ylabel: str, path: Path, log: bool) -> None:
    by = index(data["results"])
    workloads = list(dict.fromkeys(r["workload"] for r in data["results"]))
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.2
    for j, s in enumerate(SYSTEMS):
        xs, ys = [], []
        for i, w in enumerate(workloads):
            r = by.get((w, s))
            if r is None or "error" in r:
                continue
            if metric == "bytes":
                v = r.get("disk_bytes")
                v = v / 2**20 if v else None
            elif metric == "overhead":
                v = overhead(r, by.get((w, "none")))
            else:
                v = (r.get("restore") or {}).get("latest")
            if v is not None:
                xs.append(i + (j - 1.5) * width)
                ys.append(max(v, 1e-3))
        ax.bar(xs, ys, width, label=NAMES[s], color=COLORS[s])
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.legend(ncols=4, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    IMG.mkdir(parents=True, exist_ok=True)
    bars(data, "bytes", "MiB on disk after the session (log)", IMG / "storage-bytes.png", True)
    bars(data, "overhead", "per-cell overhead, s (log)", IMG / "storage-overhead.png", True)
    bars(
        data, "restore", "restore to latest, s to first answer", IMG / "storage-restore.png", False
    )
    print(table(data))


if __name__ == "__main__":
    main()
