"""Ingest throughput and memory on a synthetic data set.

    python benchmarks/bench_ingest.py --accounts 1000000

Generates the raw data once (not timed), then ingests it in a child process and reports wall
seconds, rows per second and the child's peak RSS. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_INGEST = """
import sys
from pipelines.ingest import ingest
from pipelines.workspace import Workspace
reports = ingest(sys.argv[1], Workspace(sys.argv[2]), progress=False)
print(sum(r.rows_in for r in reports.values()))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    from pipelines.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as folder:
        raw = Path(folder) / "raw"
        generate(raw, accounts=args.accounts, seed=args.seed, progress=False)
        seconds, rows = [], 0
        for attempt in range(args.repeat):
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", _INGEST, str(raw), str(Path(folder) / f"ws{attempt}")],
                                    check=True, capture_output=True, text=True)
            seconds.append(time.perf_counter() - started)
            rows = int(result.stdout.strip().splitlines()[-1])
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    median = statistics.median(seconds)
    print(f"ingested {rows:,} rows from {args.accounts:,} accounts in {median:.1f} s (median of {args.repeat}), "
          f"{rows / median:,.0f} rows/s, peak RSS {peak_gb:.2f} GB")
    print(json.dumps({"accounts": args.accounts, "rows": rows, "seconds": round(median, 2),
                      "rows_per_s": round(rows / median), "peak_rss_gb": round(peak_gb, 2), "repeat": args.repeat}))


if __name__ == "__main__":
    main()
