"""Put the results table and the run's conditions into docs/storage.md (between markers).

/var/tmp/jusnap-bench/venv/bin/python bench/storage/to_docs.py bench/storage/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plot import table

DOC = Path(__file__).resolve().parents[2] / "docs" / "storage.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    la, lb = data["load_before"], data.get("load_after", ["?"])
    block = (
        f"{START}\n"
        f"Measured {data['started']} to {data.get('finished', '?')} on {data['machine']}"
        f" (Firecracker VM, ext4), scale {data['scale']:g}; load average before"
        f" {la[0]:.2f}, after {lb[0]:.2f} (other engineers' test runs shared the machine).\n\n"
        f"{table(data)}\n{END}"
    )
    text = DOC.read_text()
    if START in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.replace("RESULTS_PLACEHOLDER", block)
    DOC.write_text(text)


if __name__ == "__main__":
    main()
