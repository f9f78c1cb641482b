"""Run the chaos suite and write its fault table into docs/reliability.md.

    .venv/bin/python tests/chaos/report.py            # full matrix (CHAOS_FULL=1: 20 kills)
    .venv/bin/python tests/chaos/report.py --reduced  # the CI subset

The figures go between the `<!-- chaos:begin -->` and `<!-- chaos:end -->` markers of the document;
the prose around them is kept.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"


def run(full: bool) -> tuple[dict, int, float]:
    out = Path(tempfile.mkdtemp()) / "chaos.json"
    env = dict(os.environ, CHAOS_REPORT=str(out), CHAOS_FULL="1" if full else "0")
    started = time.monotonic()
    rc = subprocess.call([sys.executable, "-m", "pytest", "tests/chaos", "-s", "-q", "-p", "no:cacheprovider"],
                         cwd=ROOT, env=env)
    return json.loads(out.read_text()), rc, time.monotonic() - started


def block(data: dict, rc: int, seconds: float) -> str:
    lines = [BEGIN, "",
             f"Measured {datetime.now(UTC):%Y-%m-%d} with `tests/chaos/report.py`"
             f"{'' if data['full'] else ' --reduced'} ({'full matrix' if data['full'] else 'CI subset'}; "
             f"pytest exit {rc}; {seconds:.0f}s wall on 2 shared cores).", "",
             "| fault | runs | passed | notes |", "|---|---:|---:|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['fault']} | {r['runs']} | {r['passed']} | {r['notes'].replace('|', '/')} |")
    lines.append("")
    lines += [f"- {k}: {v}" for k, v in data["figures"].items()]
    return "\n".join([*lines, "", END])


def main() -> int:
    data, rc, seconds = run(full="--reduced" not in sys.argv)
    text = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(head + block(data, rc, seconds) + tail)
    print(f"wrote {DOC}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
