"""Pseudonymizing a phone column: the compiled dictionary path against Arrow's and a ``hmac.new`` loop.

    python benchmarks/bench_pseudonymize.py            # 10,000,000 rows, 1,000,000 distinct phones
    python benchmarks/bench_pseudonymize.py --small    # 1,000,000 rows, 100,000 distinct phones

The column is made in memory (not timed): canonical mainland mobile numbers, each distinct number
repeated ~10 times in random order. Timed, end to end: ``pseudonymize(column, key, PERSON,
identifier="phone")`` (dictionary-encode with the compiled hash table, normalize and hash each
distinct value once, gather the 32-byte pseudonyms). Paired with it in the same process, each
repeat: the same work through Arrow's kernels (``pc.dictionary_encode``, then a string ``take``),
the path used before; on a shared machine compare the ratio, not the seconds.
The second baseline is the obvious loop, ``hmac.new(key, value, sha256).hexdigest()[:32]`` per row, timed
on the first ``--loop-rows`` rows and scaled linearly to the whole column (said so in the output).
One tiny call first loads the compiled SHA-256 kernel (once per process; not timed).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import statistics
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from profiling.keys import MasterKey, derive_key
from profiling._string_hash import _dictionary_encode
from profiling.pseudonyms import PERSON, _gathered, _hex_digests, normalize, pseudonymize


def make_phones(rows: int, distinct: int, seed: int) -> pa.Array:
    """``rows`` canonical phone numbers drawn from ``distinct`` different ones."""
    rng = np.random.default_rng(seed)
    numbers = np.unique(rng.integers(13_000_000_000, 20_000_000_000, size=distinct + distinct // 10 + 10))
    numbers = rng.permutation(numbers)[:distinct]
    distinct_phones = pa.array(numbers).cast(pa.string())
    return distinct_phones.take(pa.array(rng.integers(0, distinct, size=rows)))


def arrow_path(column: pa.Array, key: bytes) -> pa.Array:
    """The same pseudonyms through Arrow's generic kernels: dictionary_encode, then a string take."""
    encoded = pc.dictionary_encode(column)
    digests = _hex_digests(normalize(encoded.dictionary, "phone"), key)
    count = len(digests)
    hashed = pa.StringArray.from_buffers(count, pa.py_buffer(np.arange(0, 32 * count + 1, 32, dtype=np.int32)),
                                         pa.py_buffer(digests))
    return hashed.take(encoded.indices)


def hmac_loop(values: list[str], key: bytes) -> list[str]:
    return [hmac.new(key, v.encode(), hashlib.sha256).hexdigest()[:32] for v in values]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--distinct", type=int, default=1_000_000)
    parser.add_argument("--loop-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="1M rows, 100k distinct")
    args = parser.parse_args(argv)
    if args.small:
        args.rows, args.distinct, args.loop_rows = 1_000_000, 100_000, 200_000
    key = MasterKey({1: bytes(range(32))})
    column = make_phones(args.rows, args.distinct, seed=7)

    domain_key = derive_key(key, PERSON)
    pseudonymize(column.slice(0, 10), key, PERSON, identifier="phone")  # loads the compiled kernels once
    arrow_path(column.slice(0, 10), domain_key)
    times, arrow_times = [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        pseudonyms = pseudonymize(column, key, PERSON, identifier="phone")
        times.append(time.perf_counter() - started)
        started = time.perf_counter()
        arrow_pseudonyms = arrow_path(column, domain_key)
        arrow_times.append(time.perf_counter() - started)
        if not arrow_pseudonyms.equals(pseudonyms):
            print("the compiled path and Arrow's kernels disagree", file=sys.stderr)
            return 1
        del arrow_pseudonyms
    seconds = statistics.median(times)
    arrow_seconds = statistics.median(arrow_times)
    speedup_vs_arrow = statistics.median(a / t for a, t in zip(arrow_times, times))

    # one more pass, stage by stage, to show where the time goes
    stages = {}
    started = time.perf_counter()
    distinct, indices = _dictionary_encode(column)
    stages["dictionary_encode"] = time.perf_counter() - started
    started = time.perf_counter()
    digests = _hex_digests(normalize(distinct, "phone"), domain_key)
    stages["normalize_and_hash_distinct"] = time.perf_counter() - started
    started = time.perf_counter()
    _gathered(digests, indices, column)
    stages["take_back"] = time.perf_counter() - started

    loop_rows = min(args.loop_rows, args.rows)
    subset = column.slice(0, loop_rows).to_pylist()
    started = time.perf_counter()
    baseline = hmac_loop(subset, domain_key)
    loop_seconds = (time.perf_counter() - started) * args.rows / loop_rows
    if baseline != pseudonyms.slice(0, loop_rows).to_pylist():
        print("the compiled path and the hmac loop disagree", file=sys.stderr)
        return 1

    rows_per_s = args.rows / seconds
    print(f"compiled path:   {args.rows:,} rows ({args.distinct:,} distinct) in {seconds:.2f} s "
          f"(median of {args.repeats}) = {rows_per_s / 1e6:.2f} M rows/s")
    print(f"arrow kernels:   {arrow_seconds:.2f} s = {args.rows / arrow_seconds / 1e6:.2f} M rows/s; "
          f"paired speedup {speedup_vs_arrow:.2f}x (median of per-repeat ratios)")
    print("  stages: " + ", ".join(f"{name} {value:.2f} s" for name, value in stages.items()))
    print(f"hmac.new loop:   timed on {loop_rows:,} rows, scaled to {args.rows:,}: {loop_seconds:.2f} s "
          f"= {args.rows / loop_seconds / 1e6:.2f} M rows/s")
    print(json.dumps({"benchmark": "pseudonymize", "rows": args.rows, "distinct": args.distinct,
                      "seconds": round(seconds, 3), "rows_per_s": round(rows_per_s),
                      "arrow_kernels_seconds": round(arrow_seconds, 3),
                      "speedup_vs_arrow_kernels": round(speedup_vs_arrow, 2),
                      "hmac_loop_seconds_scaled": round(loop_seconds, 3), "hmac_loop_rows_timed": loop_rows,
                      "speedup_vs_hmac_loop": round(loop_seconds / seconds, 1),
                      "stage_seconds": {name: round(value, 3) for name, value in stages.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
