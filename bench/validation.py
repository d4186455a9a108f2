"""How long validating the largest definition takes (500 nodes, 2,000 connections).

Every create and update validates the whole definition before anything is
written; this prints the best and median of N runs, in milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from domain.definition import validate_definition
from tests.unit.test_definition import largest_definition  # the suite's own largest case


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    body = largest_definition()
    timings = []
    for _ in range(args.runs):
        started = time.perf_counter()
        validate_definition(**body)
        timings.append((time.perf_counter() - started) * 1000)
    print(
        f"validate 500 nodes / 2,000 connections: best {min(timings):.1f} ms, "
        f"median {statistics.median(timings):.1f} ms over {args.runs} runs"
    )


if __name__ == "__main__":
    main()
