"""Exact batch top-K scoring against the bare GEMM, ``implicit`` and FAISS, side by side in one run.

Workloads (``_scoring_workload.py``), d = 64, K = 10, 50,000 items:

- ``--factors random`` (default): 200,000 persons, random float32 factors (log-normal item
  popularity), 20 excluded (already bought) items per person;
- ``--factors als``: implicit-ALS factors fitted on the orders of a ``portrait synth`` data set
  (Zipf item popularity; cached outside the repository), the persons' purchases excluded.

    python benchmarks/bench_scoring.py                                   # random factors, full size
    python benchmarks/bench_scoring.py --factors als --persons 50000     # fitted factors
    python benchmarks/bench_scoring.py --persons 20000                   # a quick run

Timed, in rounds whose order rotates (the machine is shared, so each ratio is taken within a
round and the report gives the median of the rounds' ratios):

- ``kernel``: ``profiling.scoring.top_k_batches`` with its defaults, every batch consumed (it
  skips the items its norm bounds show cannot win: ``products_skipped_share``);
- ``gemm``: the bare float32 person x item matrix product into reused buffers, no selection, at
  the fastest of several chunkings and threadings (chosen first on a subset of persons);
- ``implicit``: ``AlternatingLeastSquares.recommend(persons, bought, N=K,
  filter_already_liked_items=True)`` with the same factors, in batches of persons;
- ``faiss``: ``IndexFlatIP`` searching K + the excluded count and dropping the excluded items
  (persons grouped by that count), in its own process
  (``_scoring_faiss.py``) with the BLAS kernel picked for this CPU (``OPENBLAS_CORETYPE``), and
  as installed (``faiss_as_installed``).

``best_round_ratios`` gives the same ratios from each contender's fastest round. Also reported:
``agreement`` (share of sampled persons whose top-K set equals a float64 brute
force up to exact ties), time per person-item at 10k/50k/200k items and at two person counts
(linearity; best of 3), and ``peak_rss_gb``: the peak resident memory of a separate process that builds the
workload and runs the kernel once, less the factor matrices; the CPU model and its SIMD flags.
Progress goes to stderr; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from _machine import cpu_model
from _scoring_workload import FACTOR_KINDS, workload
from threadpoolctl import threadpool_info, threadpool_limits

from profiling.scoring import top_k_batches

HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
              "amx_tile", "neon", "asimd", "sve")


def simd_flags() -> list[str]:
    """The vector instruction sets /proc/cpuinfo lists for this CPU (of those BLAS kernels use)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.is_file() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines()
                  if line.startswith(("flags", "Features"))), [])
    return [flag for flag in SIMD_FLAGS if flag in flags]


def run_kernel(person_factors, item_factors, k, bought, keep: np.ndarray | None = None) -> int:
    """Every person's top-K; returns the person-item products the kernel computed."""
    products = 0
    for batch in top_k_batches(person_factors, item_factors, k, bought=bought):
        products += batch.products
        if keep is not None:
            keep[batch.persons] = batch.items
    return products


def make_gemm(person_factors: np.ndarray, item_factors: np.ndarray, threads: int, chunk: int) -> Callable[[], None]:
    """The bare product, ``chunk`` persons per call: ``threads`` workers with 1 BLAS thread each,
    or (threads == 1) one caller with BLAS using every core."""
    items_t = item_factors.T
    buffers = [np.ones((chunk, item_factors.shape[0]), dtype=np.float32) for _ in range(threads)]
    persons = person_factors.shape[0]
    starts = list(range(0, persons, chunk))

    def one(position: int) -> None:
        start = starts[position]
        stop = min(start + chunk, persons)
        np.dot(person_factors[start:stop], items_t, out=buffers[position % threads][: stop - start])

    def run() -> None:
        if threads == 1:
            for position in range(len(starts)):
                one(position)
            return
        with threadpool_limits(1), ThreadPoolExecutor(threads) as workers:
            # Worker w takes chunks w, w + threads, ...: each owns its buffer.
            def lane(w: int) -> None:
                for position in range(w, len(starts), threads):
                    one(position)
            list(workers.map(lane, range(threads)))
    return run


def make_implicit(person_factors, item_factors, k, bought, batch: int = 10_000) -> Callable[[], None]:
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):  # implicit checks the BLAS threads when the model is made
        model = AlternatingLeastSquares(factors=person_factors.shape[1], num_threads=os.cpu_count() or 1)
    model.user_factors = person_factors
    model.item_factors = item_factors
    persons = person_factors.shape[0]

    def run() -> None:
        # implicit's own threads call BLAS: one BLAS thread each, as its warning asks.
        with threadpool_limits(1, "blas"):
            for start in range(0, persons, batch):
                stop = min(start + batch, persons)
                model.recommend(np.arange(start, stop), bought[start:stop], N=k, filter_already_liked_items=True)
    return run


class FaissWorker:
    """A ``_scoring_faiss.py`` process; ``run()`` times one search of every person."""

    def __init__(self, args: argparse.Namespace, coretype: str | None) -> None:
        env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_CORETYPE"}
        if coretype:
            env["OPENBLAS_CORETYPE"] = coretype
        command = [sys.executable, str(HERE / "_scoring_faiss.py"), "--factors", args.factors,
                   "--persons", str(args.persons),
                   "--items", str(args.items), "--dims", str(args.dims), "--k", str(args.k),
                   "--excluded", str(args.excluded), "--seed", str(args.seed), "--threads", str(os.cpu_count() or 1)]
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                        cwd=HERE)
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"the FAISS process (OPENBLAS_CORETYPE={coretype}) exited with "
                               f"{self.process.wait()} before it was ready")
        faiss_blas = [b for b in json.loads(ready)["blas"] if "faiss" in (b["filepath"] or "")]
        self.kernel = faiss_blas[0]["architecture"] if faiss_blas else None

    def run(self) -> float:
        self.process.stdin.write("run\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())["seconds"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def tuned_coretype() -> str:
    """The OpenBLAS kernel for this CPU: SkylakeX where AVX-512 exists, Haswell (AVX2 + FMA) otherwise."""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return "SkylakeX" if " avx512f" in flags else "Haswell"


def timed(run: Callable[[], None]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def reference_top_k(person_factors, item_factors, bought, persons: np.ndarray,
                    k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """float64 brute force for the sampled persons: (items, scores), by (-score, item)."""
    items = np.asarray(item_factors, dtype=np.float64)
    result = []
    for p in persons:
        scores = items @ np.asarray(person_factors[p], dtype=np.float64)
        scores[bought.indices[bought.indptr[p]:bought.indptr[p + 1]]] = -np.inf
        order = np.lexsort((np.arange(scores.size), -scores))[:k]
        result.append((order, scores))
    return result


def agreement(person_factors, item_factors, bought, kernel_items: np.ndarray, k: int, sample: int,
              seed: int) -> tuple[float, float]:
    """(share equal up to ties, share with exactly the same set) over ``sample`` random persons.

    Up to ties: the kernel's items have the same float64 scores as the reference's, within the
    float32 rounding of a d-term inner product.
    """
    rng = np.random.default_rng(seed + 7)
    persons = rng.choice(person_factors.shape[0], min(sample, person_factors.shape[0]), replace=False)
    tolerance = 1e-5 * person_factors.shape[1]
    same_up_to_ties = same_set = 0
    for p, (expected, scores) in zip(persons, reference_top_k(person_factors, item_factors, bought, persons, k)):
        got = kernel_items[p][kernel_items[p] >= 0]
        same_set += set(got.tolist()) == set(expected.tolist())
        same_up_to_ties += len(got) == len(expected) and np.allclose(
            np.sort(scores[got]), np.sort(scores[expected]), rtol=0, atol=tolerance)
    return same_up_to_ties / len(persons), same_set / len(persons)


def memory_probe(args: argparse.Namespace) -> None:
    """Child mode: build the workload, run the kernel once, print peak RSS less the factors (GB)."""
    person_factors, item_factors, bought = workload(args.factors, args.persons, args.items, args.dims,
                                                    args.excluded, args.seed)
    run_kernel(person_factors, item_factors, args.k, bought)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    factors = person_factors.nbytes + item_factors.nbytes
    print(json.dumps({"peak_rss_gb": (peak - factors) / 1e9, "factors_gb": factors / 1e9}))


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of time(denominator) / time(numerator): a throughput ratio."""
    return statistics.median(d / n for n, d in zip(numerator, denominator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--factors", choices=FACTOR_KINDS, default="random",
                        help="random factors, or implicit-ALS factors of synthetic orders (cached)")
    parser.add_argument("--persons", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--dims", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--excluded", type=int, default=20, help="excluded items per person (random factors)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample", type=int, default=200, help="persons checked against the brute force")
    parser.add_argument("--scaling-persons", type=int, default=20_000)
    parser.add_argument("--device", choices=["cpu"], default="cpu", help="only the CPU kernel exists")
    parser.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_probe:
        memory_probe(args)
        return

    person_factors, item_factors, bought = workload(args.factors, args.persons, args.items, args.dims,
                                                    args.excluded, args.seed)  # fits and caches ALS factors once
    log(f"memory probe: {args.persons} x {args.items} in a separate process")
    probe = subprocess.run([sys.executable, __file__, "--memory-probe", "--factors", args.factors,
                            "--persons", str(args.persons),
                            "--items", str(args.items), "--dims", str(args.dims), "--k", str(args.k),
                            "--excluded", str(args.excluded), "--seed", str(args.seed)],
                           capture_output=True, text=True, check=True)
    memory = json.loads(probe.stdout.strip().splitlines()[-1])
    run_kernel(person_factors[:512], item_factors, args.k, bought[:512])  # compile / load the cache

    calibration = min(args.persons, 20_000)
    gemm_options = [(2, 256), (2, 1024), (2, 4096), (1, 1024), (1, 4096)]
    gemm_seconds = {}
    for threads, chunk in gemm_options:
        run = make_gemm(person_factors[:calibration], item_factors, threads, chunk)
        run()
        gemm_seconds[(threads, chunk)] = statistics.median(timed(run) for _ in range(2))
        rate = calibration / gemm_seconds[(threads, chunk)]
        log(f"gemm calibration threads={threads} chunk={chunk}: {rate:,.0f} persons/s")
    gemm_threads, gemm_chunk = min(gemm_seconds, key=gemm_seconds.get)

    kernel_items = np.full((args.persons, args.k), -1, dtype=np.int32)
    gemm = make_gemm(person_factors, item_factors, gemm_threads, gemm_chunk)
    implicit = make_implicit(person_factors, item_factors, args.k, bought)
    implicit()  # warm-up
    products: list[int] = []
    contenders: dict[str, Callable[[], float]] = {
        "kernel": lambda: timed(lambda: products.append(run_kernel(person_factors, item_factors, args.k, bought,
                                                                   kernel_items))),
        "gemm": lambda: timed(gemm),
        "implicit": lambda: timed(implicit),
    }
    faiss_workers = {"faiss": FaissWorker(args, tuned_coretype()), "faiss_as_installed": FaissWorker(args, None)}
    for name, worker in faiss_workers.items():
        worker.run()  # warm-up: first search pays page faults and thread start
        contenders[name] = worker.run

    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    try:
        for round_number in range(args.rounds):
            order = names[round_number % len(names):] + names[: round_number % len(names)]
            for name in order:
                seconds[name].append(contenders[name]())
                log(f"round {round_number + 1} {name}: {args.persons / seconds[name][-1]:,.0f} persons/s")
    finally:
        for worker in faiss_workers.values():
            worker.close()

    same_up_to_ties, same_set = agreement(person_factors, item_factors, bought, kernel_items, args.k, args.sample,
                                          args.seed)

    scaling, scaling_skipped = {}, {}
    small = min(args.scaling_persons, args.persons)
    for items in (10_000, 50_000, 200_000):
        persons_s, items_s, bought_s = workload(args.factors, small, items, args.dims, args.excluded, args.seed + 1)
        small_products = run_kernel(persons_s, items_s, args.k, bought_s)
        scale_run = partial(run_kernel, persons_s, items_s, args.k, bought_s)
        taken = min(timed(scale_run) for _ in range(3))
        scaling[f"{small}x{items}"] = round(taken / (small * items) * 1e9, 4)
        scaling_skipped[f"{small}x{items}"] = round(1 - small_products / (small * items), 4)
        log(f"scaling {small} persons x {items} items: {taken / (small * items) * 1e9:.3f} ns per person-item, "
            f"{scaling_skipped[f'{small}x{items}']:.1%} of products skipped")
    full_size = min(seconds["kernel"]) / (args.persons * args.items) * 1e9
    scaling[f"{args.persons}x{args.items}"] = round(full_size, 4)

    throughput = {name: round(args.persons / statistics.median(times)) for name, times in seconds.items()}
    excluded_per_person = np.diff(bought.indptr)
    report = {
        "benchmark": "scoring", "factors": args.factors,
        "cpu": cpu_model(), "simd": simd_flags(),
        "persons": args.persons, "items": args.items, "dims": args.dims, "k": args.k,
        "excluded_per_person": {"mean": round(float(excluded_per_person.mean()), 2),
                                "max": int(excluded_per_person.max())},
        "rounds": args.rounds, "cpus": os.cpu_count(),
        "persons_per_second": throughput,
        "throughput_vs_gemm": round(median_ratio(seconds["kernel"], seconds["gemm"]), 3),
        "speedup_vs_implicit": round(median_ratio(seconds["kernel"], seconds["implicit"]), 3),
        "speedup_vs_faiss": round(median_ratio(seconds["kernel"], seconds["faiss"]), 3),
        "speedup_vs_faiss_as_installed": round(median_ratio(seconds["kernel"], seconds["faiss_as_installed"]), 3),
        # The same ratios from each contender's fastest round: less sensitive to other load.
        "best_round_ratios": {name: round(min(seconds[name]) / min(seconds["kernel"]), 3)
                              for name in ("gemm", "implicit", "faiss", "faiss_as_installed")},
        "gemm_best": {"threads": gemm_threads, "persons_per_chunk": gemm_chunk},
        "faiss_blas_kernel": faiss_workers["faiss"].kernel,
        "faiss_as_installed_blas_kernel": faiss_workers["faiss_as_installed"].kernel,
        "products_skipped_share": round(1 - statistics.median(products) / (args.persons * args.items), 4),
        "agreement": round(same_up_to_ties, 4),
        "agreement_exact_sets": round(same_set, 4),
        "agreement_sample": min(args.sample, args.persons),
        "ns_per_person_item": scaling,
        "products_skipped_share_by_size": scaling_skipped,
        "peak_rss_gb": round(memory["peak_rss_gb"], 3),
        "factors_gb": round(memory["factors_gb"], 3),
        "numpy_blas": [(b["internal_api"], b["version"], b["architecture"]) for b in threadpool_info()
                       if b["user_api"] == "blas"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
