"""Implicit-feedback ALS against ``implicit``'s CPU ALS, side by side in one run.

Workload (default): 200,000 persons x 20,000 items with 3,000,000 non-zeros, items drawn with Zipf
popularity and persons with log-normal activity, each value a recency weight in (0, 1]. Both fits
use 64 factors, 15 sweeps, 3 conjugate-gradient steps, float32, regularization 0.01 and
confidence 1 + 40·r, on 2 threads:

- ``portrait``: ``profiling.factors.ImplicitALS(threads=2)`` (BLAS limited to 2 threads, used once
  per half-sweep for the Gram matrix);
- ``implicit``: ``implicit.cpu.als.AlternatingLeastSquares(num_threads=2, use_cg=True)`` given the
  confidences 1 + 40·r themselves with ``alpha=1`` (its confidence is the matrix value, ours
  ``1 + alpha·r``: so both minimise the same loss), BLAS limited to 1 thread as ``implicit`` asks.

Fits alternate, ``--repeats`` of each (median reported). Not timed: numba's compilation, paid
once per machine since the kernels are cached on disk (``compile_s``, a first fit with an empty
cache in a fresh process), and loading the cached kernels (``warm_up_s``, one tiny fit first). Both training losses come from one function,
``implicit``'s ``calculate_loss``, on the same confidence matrix.

Quality: ``portrait synth`` data (``--accounts``), purchases before a cut date (the 80th percentile
of order times) train both models (recency weights at the cut, 90-day half-life); each person who
bought before and after gets the top 10 unbought items by inner product, and precision@10 counts
those bought after the cut: the mean over ``--quality-seeds`` fits (seeds 0, 1, ...: with a seed both
start from the same factors, so they differ by float32 rounding only).

    python benchmarks/bench_als.py                    # the full workload
    python benchmarks/bench_als.py --quick            # 50,000 x 5,000, 750,000 non-zeros, 5,000 accounts

Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
from _machine import cpu_model
from implicit.cpu import _als as implicit_kernels
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from profiling.factors import ImplicitALS, recency_weighted_counts

THREADS = 2
SETTINGS = {"factors": 64, "iterations": 15, "cg_steps": 3, "regularization": 0.01, "alpha": 40.0}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def zipf_feedback(users: int, items: int, nnz: int, seed: int = 0) -> sp.csr_array:
    """``users`` x ``items`` recency weights with ``nnz`` distinct non-zeros (Zipf items, log-normal persons)."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    rng.shuffle(popularity)
    activity = rng.lognormal(0.0, 1.0, users)
    pairs = np.empty(0, dtype=np.int64)
    while len(pairs) < nnz:
        draw = int((nnz - len(pairs)) * 1.3) + 16
        drawn = (rng.choice(users, draw, p=activity / activity.sum()).astype(np.int64) * items
                 + rng.choice(items, draw, p=popularity / popularity.sum()))
        pairs = np.union1d(pairs, drawn)
    pairs = rng.permutation(pairs)[:nnz]
    weights = np.power(0.5, rng.uniform(0.0, 365.0, nnz) / 90.0).astype(np.float32)
    matrix = sp.csr_array((weights, (pairs // items, pairs % items)), shape=(users, items))
    matrix.sort_indices()
    return matrix


def confidence(feedback: sp.csr_array, alpha: float) -> sp.csr_matrix:
    """1 + alpha·r on the non-zeros: the matrix ``implicit`` takes as its confidence (with alpha 1)."""
    matrix = sp.csr_matrix(feedback, dtype=np.float32, copy=True)
    matrix.data = (np.float32(1.0) + np.float32(alpha) * matrix.data).astype(np.float32)
    return matrix


def fit_portrait(feedback: sp.csr_array, iterations: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    with threadpool_limits(THREADS, "blas"):
        model = ImplicitALS(**{**SETTINGS, "iterations": iterations}, threads=THREADS, random_state=seed)
        model.fit(feedback)
    return model.person_factors_, model.item_factors_


def fit_implicit(feedback: sp.csr_array, iterations: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=SETTINGS["factors"], regularization=SETTINGS["regularization"],
                                        alpha=1.0, iterations=iterations, use_cg=True, dtype=np.float32,
                                        num_threads=THREADS, random_state=seed)
        model.cg_steps = SETTINGS["cg_steps"]
        model.fit(confidence(feedback, SETTINGS["alpha"]), show_progress=False)
    return model.user_factors, model.item_factors


def cold_compile_seconds() -> float:
    """Seconds for a first tiny fit in a fresh process with an empty numba cache: the compilation
    that a fit pays once per machine (kernels are cached on disk) and that no timing below includes."""
    with tempfile.TemporaryDirectory(prefix="bench-als-numba-") as cache:
        code = ("import time, scipy.sparse as sp; from profiling.factors import ImplicitALS; "
                "m = sp.random(50, 20, density=0.2, format='csr', random_state=0); t = time.perf_counter(); "
                "ImplicitALS(factors=4, iterations=1, threads=1).fit(m); print(time.perf_counter() - t)")
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                              env={**os.environ, "NUMBA_CACHE_DIR": cache})
    return float(done.stdout.strip().splitlines()[-1])


def training_loss(feedback: sp.csr_array, person_factors: np.ndarray, item_factors: np.ndarray) -> float:
    """``implicit``'s ``calculate_loss``: the confidence-weighted squared error plus the regularization,
    over the total confidence of all cells."""
    with threadpool_limits(1, "blas"):
        return float(implicit_kernels.calculate_loss(confidence(feedback, SETTINGS["alpha"]), person_factors,
                                                     item_factors, SETTINGS["regularization"],
                                                     num_threads=THREADS))


def holdout_split(accounts: int, seed: int = 7) -> tuple[sp.csr_array, list[set[int]], np.ndarray]:
    """Synthetic orders split at the 80th percentile of order times: the training recency weights,
    each person's items bought after the cut, and the persons who bought on both sides."""
    with tempfile.TemporaryDirectory(prefix="bench-als-") as folder:
        subprocess.run(["portrait", "synth", "--out", folder, "--accounts", str(accounts), "--seed", str(seed)],
                       check=True, stdout=subprocess.DEVNULL)
        orders = pq.read_table(Path(folder) / "orders", columns=["account_id", "placed_at", "items"])
        item_ids = pq.read_table(Path(folder) / "catalogue", columns=["item_id"])["item_id"].to_numpy()
    lengths = pc.list_value_length(orders["items"]).to_numpy()
    account, person = np.unique(orders["account_id"].to_numpy(zero_copy_only=False), return_inverse=True)
    person = np.repeat(person, lengths)
    item_ids = np.sort(item_ids)
    bought = pc.list_flatten(orders["items"]).to_numpy(zero_copy_only=False)
    item = np.searchsorted(item_ids, bought).clip(0, len(item_ids) - 1)
    placed = np.repeat(orders["placed_at"].cast("int64").to_numpy(), lengths)
    known = item_ids[item] == bought  # items no longer in the catalogue are left out
    # rows: (person, item, placed_at) per purchased item
    person, item, placed = person[known], item[known], placed[known]
    cut = np.quantile(placed, 0.8)
    before = placed < cut
    train = recency_weighted_counts(person[before], item[before], (cut - placed[before]) / 86_400e6,
                                    persons=len(account), items=len(item_ids))
    later: list[set[int]] = [set() for _ in range(len(account))]
    for p, i in zip(person[~before].tolist(), item[~before].tolist(), strict=True):
        later[p].add(i)
    bought_before = np.diff(train.indptr) > 0
    tested = np.flatnonzero(bought_before & np.array([bool(s) for s in later]))
    return sp.csr_array(train, dtype=np.float32), later, tested


def precision_at_10(train: sp.csr_array, later: list[set[int]], tested: np.ndarray, person_factors: np.ndarray,
                    item_factors: np.ndarray) -> float:
    hits = 0
    for start in range(0, len(tested), 4096):
        persons = tested[start:start + 4096]
        scores = person_factors[persons] @ item_factors.T
        block = train[persons]
        rows = np.repeat(np.arange(len(persons)), np.diff(block.indptr))
        scores[rows, block.indices] = -np.inf
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        hits += sum(len(later[p].intersection(t.tolist())) for p, t in zip(persons.tolist(), top, strict=True))
    return hits / (10 * len(tested))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--nnz", type=int, default=3_000_000)
    parser.add_argument("--iterations", type=int, default=SETTINGS["iterations"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--accounts", type=int, default=50_000, help="synthetic accounts for precision@10")
    parser.add_argument("--quality-seeds", type=int, default=3, help="fits per model for precision@10 (mean)")
    parser.add_argument("--quick", action="store_true", help="50,000 x 5,000, 750,000 non-zeros, 5,000 accounts")
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.nnz, args.accounts = 50_000, 5_000, 750_000, 5_000

    feedback = zipf_feedback(args.users, args.items, args.nnz)
    log(f"feedback: {feedback.shape[0]:,} x {feedback.shape[1]:,}, {feedback.nnz:,} non-zeros")
    compile_s = cold_compile_seconds()
    started = time.perf_counter()
    fit_portrait(feedback[:1000], 1)  # loads the compiled kernels (cached on disk) before the timing
    warm_up_s = time.perf_counter() - started
    fit_implicit(feedback[:1000], 1)
    times: dict[str, list[float]] = {"portrait": [], "implicit": []}
    factors = {}
    fits = {"portrait": fit_portrait, "implicit": fit_implicit}
    for repeat in range(args.repeats):
        for name in (("portrait", "implicit") if repeat % 2 == 0 else ("implicit", "portrait")):
            started = time.perf_counter()
            factors[name] = fits[name](feedback, args.iterations)
            times[name].append(time.perf_counter() - started)
            log(f"{name}: {times[name][-1]:.2f} s")
    seconds = {name: statistics.median(values) for name, values in times.items()}
    losses = {name: training_loss(feedback, *factors[name]) for name in fits}

    train, later, tested = holdout_split(args.accounts)
    log(f"holdout: {train.shape[0]:,} persons, {train.nnz:,} training pairs, {len(tested):,} tested")
    precision = {name: [precision_at_10(train, later, tested, *fit(train, SETTINGS["iterations"], seed))
                        for seed in range(args.quality_seeds)] for name, fit in fits.items()}
    result = {
        "time_vs_implicit": round(seconds["portrait"] / seconds["implicit"], 3),
        "portrait_s": round(seconds["portrait"], 2), "implicit_s": round(seconds["implicit"], 2),
        "portrait_runs_s": [round(t, 2) for t in times["portrait"]],
        "implicit_runs_s": [round(t, 2) for t in times["implicit"]],
        "portrait_loss": losses["portrait"], "implicit_loss": losses["implicit"],
        "loss_ratio": round(losses["portrait"] / losses["implicit"], 4),
        "portrait_precision_at_10": round(statistics.mean(precision["portrait"]), 5),
        "implicit_precision_at_10": round(statistics.mean(precision["implicit"]), 5),
        "portrait_precision_by_seed": [round(v, 5) for v in precision["portrait"]],
        "implicit_precision_by_seed": [round(v, 5) for v in precision["implicit"]],
        "holdout_persons": len(tested), "compile_s": round(compile_s, 2), "warm_up_s": round(warm_up_s, 2),
        "users": feedback.shape[0], "items": feedback.shape[1], "nnz": feedback.nnz,
        "iterations": args.iterations, "threads": THREADS, "cpu": cpu_model(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
