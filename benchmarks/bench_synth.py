"""Benchmark of the synthetic data generator: wall time and peak memory for N accounts.

Runs ``pipelines.synthetic.generate`` in a child process into a temporary folder, counts rows per
table from the Parquet footers, prints a short summary and, as the last line, one JSON object.

Memory is reported two ways: ``peak_rss_gb`` is the peak of the summed resident memory of the
child and all its worker processes (sampled every 50 ms from /proc; what the machine must hold),
and ``max_process_rss_gb`` is ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the largest single
process. Times are wall-clock seconds, memory in GB (10^9 bytes).

    python benchmarks/bench_synth.py --accounts 1000000 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 120
TARGET_PEAK_RSS_GB = 4.0
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss_bytes(root: int) -> int:
    """Resident bytes of ``root`` and every descendant process (Linux /proc)."""
    parents: dict[int, int] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry.name}/statm", "rb") as statm:
                rss[int(entry.name)] = int(statm.read().split()[1]) * _PAGE
            parents[int(entry.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    total, stack = 0, [root]
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


class _TreeMemorySampler(threading.Thread):
    def __init__(self, root: int, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.root, self.interval_s, self.peak_bytes = root, interval_s, 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_bytes = max(self.peak_bytes, _tree_rss_bytes(self.root))
            self._done.wait(self.interval_s)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak_bytes


def _rows_per_table(out: Path) -> dict[str, int]:
    return {table.name: sum(pq.ParquetFile(part).metadata.num_rows for part in sorted(table.glob("*.parquet")))
            for table in sorted(out.iterdir()) if table.is_dir()}


def run_once(accounts: int, seed: int, batch_accounts: int | None) -> tuple[float, int, dict[str, int]]:
    """Generate once in a child process; returns (wall seconds, peak tree RSS bytes, rows per table)."""
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as scratch:
        out = Path(scratch) / "raw"
        options = f", batch_accounts={batch_accounts}" if batch_accounts else ""
        code = (f"from pipelines.synthetic import generate; "
                f"generate({str(out)!r}, accounts={accounts}, seed={seed}{options}, progress=False)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env)
        sampler = _TreeMemorySampler(child.pid)
        sampler.start()
        returncode = child.wait()
        seconds = time.perf_counter() - started
        peak = sampler.stop()
        if returncode != 0:
            raise SystemExit(f"generator failed with exit status {returncode}")
        return seconds, peak, _rows_per_table(out)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median time is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-accounts", type=int, default=None, help="generator batch size (default: its own)")
    args = parser.parse_args(argv)
    seconds, peaks = [], []
    for attempt in range(args.repeat):
        wall, peak, rows = run_once(args.accounts, args.seed, args.batch_accounts)
        seconds.append(wall)
        peaks.append(peak)
        print(f"run {attempt + 1}/{args.repeat}: {wall:.1f} s, peak RSS (all processes) {peak / 1e9:.2f} GB",
              file=sys.stderr)
    median = statistics.median(seconds)
    total = sum(rows.values())
    max_process_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # KiB on Linux
    result = {
        "accounts": args.accounts,
        "orders": rows.get("orders", 0),
        "rows_total": total,
        "seconds": round(median, 2),
        "seconds_all": [round(s, 2) for s in seconds],
        "rows_per_s": round(total / median),
        "peak_rss_gb": round(max(peaks) / 1e9, 3),
        "max_process_rss_gb": round(max_process_rss_gb, 3),
        "target_seconds": TARGET_SECONDS,
        "target_peak_rss_gb": TARGET_PEAK_RSS_GB,
        "cpus": len(os.sched_getaffinity(0)),
        "rows": rows,
    }
    print(f"{args.accounts:,} accounts -> {total:,} rows in {median:.1f} s ({total / median:,.0f} rows/s), "
          f"peak RSS {result['peak_rss_gb']:.2f} GB all processes / {result['max_process_rss_gb']:.2f} GB largest; "
          f"targets {TARGET_SECONDS} s, {TARGET_PEAK_RSS_GB} GB")
    for name, count in rows.items():
        print(f"  {name:15s} {count:>12,}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
