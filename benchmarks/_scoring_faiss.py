"""FAISS ``IndexFlatIP`` on the scoring benchmark's workload, in its own process.

Run by ``bench_scoring.py`` with ``OPENBLAS_CORETYPE`` set or not: the BLAS kernel FAISS's
bundled OpenBLAS picks is fixed when the library loads, so each kernel needs a process.

    python benchmarks/_scoring_faiss.py --persons P --items I --dims D --k K --excluded E --seed S

Prints one JSON line on start (the BLAS libraries threadpoolctl sees), then reads commands
from stdin: ``run`` searches every person for K + E items, drops the excluded ones, keeps K,
and prints ``{"seconds": ...}``; ``quit`` (or end of input) stops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import faiss
import numpy as np
from _scoring_workload import make_bought, make_factors
from threadpoolctl import threadpool_info


def filter_excluded(candidates: np.ndarray, bought_keys: np.ndarray, items: int, k: int) -> np.ndarray:
    """Per row, the first ``k`` candidates not in ``bought_keys`` (sorted ``person * items + item``)."""
    persons = np.arange(candidates.shape[0], dtype=np.int64)[:, None]
    keys = persons * items + candidates
    position = np.minimum(np.searchsorted(bought_keys, keys), bought_keys.size - 1)
    excluded = (bought_keys[position] == keys) | (candidates < 0)
    order = np.argsort(excluded, axis=1, kind="stable")[:, :k]  # rows: persons x k, kept first
    return np.take_along_axis(candidates, order, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("persons", "items", "dims", "k", "excluded", "seed", "threads"):
        parser.add_argument(f"--{name}", type=int, default=2 if name == "threads" else None)
    args = parser.parse_args()
    person_factors, item_factors = make_factors(args.persons, args.items, args.dims, args.seed)
    bought = make_bought(args.persons, args.items, args.excluded, args.seed)
    rows = np.repeat(np.arange(args.persons, dtype=np.int64), np.diff(bought.indptr))
    bought_keys = rows * args.items + bought.indices  # sorted: CSR rows in order, columns sorted
    faiss.omp_set_num_threads(args.threads)
    index = faiss.IndexFlatIP(args.dims)
    index.add(item_factors)
    blas = [{key: info.get(key) for key in ("internal_api", "version", "architecture", "filepath")}
            for info in threadpool_info() if info["user_api"] == "blas"]
    print(json.dumps({"ready": True, "blas": blas}), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        _, candidates = index.search(person_factors, args.k + args.excluded)
        top = filter_excluded(candidates, bought_keys, args.items, args.k)
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "checksum": int(top[:, 0].sum())}), flush=True)


if __name__ == "__main__":
    main()
