"""FAISS ``IndexFlatIP`` on the scoring benchmark's workload, in its own process.

Run by ``bench_scoring.py`` with ``OPENBLAS_CORETYPE`` set or not: the BLAS kernel FAISS's
bundled OpenBLAS picks is fixed when the library loads, so each kernel needs a process.

    python benchmarks/_scoring_faiss.py --factors F --persons P --items I --dims D --k K --excluded E --seed S

Prints one JSON line on start (the BLAS libraries threadpoolctl sees), then reads commands
from stdin: ``run`` searches every person for K + E items, E the most excluded items among the
persons searched together, drops the excluded ones, keeps K, and prints ``{"seconds": ...}``;
``quit`` (or end of input) stops. Persons are searched in groups of like exclusion counts (the
counts rounded up to a power of two; all of them at once when every person has the same count),
so a few persons with hundreds of purchases do not make everyone's search deeper.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import faiss
import numpy as np
from _scoring_workload import FACTOR_KINDS, workload
from threadpoolctl import threadpool_info


def filter_excluded(candidates: np.ndarray, persons: np.ndarray, bought_keys: np.ndarray, items: int,
                    k: int) -> np.ndarray:
    """Per row (person ``persons[row]``), the first ``k`` candidates not in ``bought_keys``
    (sorted ``person * items + item``)."""
    keys = persons.astype(np.int64)[:, None] * items + candidates
    if not bought_keys.size:
        bought_keys = np.full(1, -1, dtype=np.int64)
    position = np.minimum(np.searchsorted(bought_keys, keys), bought_keys.size - 1)
    excluded = (bought_keys[position] == keys) | (candidates < 0)
    order = np.argsort(excluded, axis=1, kind="stable")[:, :k]  # rows: persons x k, kept first
    return np.take_along_axis(candidates, order, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--factors", choices=FACTOR_KINDS, default="random")
    for name in ("persons", "items", "dims", "k", "excluded", "seed", "threads"):
        parser.add_argument(f"--{name}", type=int, default=2 if name == "threads" else None)
    args = parser.parse_args()
    person_factors, item_factors, bought = workload(args.factors, args.persons, args.items, args.dims, args.excluded,
                                                    args.seed)
    per_person = np.diff(bought.indptr)
    rows = np.repeat(np.arange(args.persons, dtype=np.int64), per_person)
    bought_keys = rows * args.items + bought.indices  # sorted: CSR rows in order, columns sorted
    depth = per_person if per_person.min() == per_person.max() else 2 ** np.ceil(np.log2(np.maximum(per_person, 1)))
    groups = [np.flatnonzero(depth == d) for d in np.unique(depth)]
    # rows: persons of like exclusion counts, each group searched K + its most excluded items deep
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
        checksum = 0
        for persons in groups:
            searched = person_factors if len(persons) == args.persons else person_factors[persons]
            _, candidates = index.search(searched, args.k + int(per_person[persons].max()))
            checksum += int(filter_excluded(candidates, persons, bought_keys, args.items, args.k)[:, 0].sum())
        seconds = time.perf_counter() - start
        print(json.dumps({"seconds": seconds, "checksum": checksum}), flush=True)


if __name__ == "__main__":
    main()
