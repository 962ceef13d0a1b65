"""The whole job on synthetic data, stage by stage, locally and on Spark (local mode).

    python benchmarks/bench_pipeline.py --accounts 1000000 [--engines local,spark]

Generates and ingests the raw data once (timed, reported apart), then runs ``portrait run``
(every stage, one engine session) on a copy of the ingested workspace in a child process per
engine, timing each stage and sampling the memory of the child and everything it starts (the
Spark JVM and its Python workers included), overall and per stage. The difference between the child's time and the
sum of its stages is start-up: imports and, on Spark, the JVM. ``local_vs_ingest`` is the local
job's time over the ingest's (same data, child processes alike; absent when a kept ``--dir`` skipped
the ingest). Last line: one JSON object, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from _machine import cpu_model

_RUN = """
import datetime as dt, json, sys, time
from dp import BudgetLedger
from pipelines.config import JobConfig
from pipelines.run import run_pipeline
from pipelines.workspace import Workspace
workspace, key_file, engine = Workspace(sys.argv[1]), sys.argv[2], sys.argv[3]
partitions = int(sys.argv[4]) if len(sys.argv) > 4 else None
BudgetLedger(workspace.ledger).set_budget("orders", epsilon=1.0, set_by="benchmark")
started = time.perf_counter()
config = JobConfig(engine=engine, spark_partitions=partitions)
as_of = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
def timed(stage, seconds):
    print(json.dumps({"stage": stage, "seconds": seconds}), flush=True)
run_pipeline(workspace, key_file, as_of, progress=False, config=config, on_stage=timed)
print(json.dumps({"stage": "total", "seconds": time.perf_counter() - started}), flush=True)
"""

_INGEST = """
import sys
from pipelines.ingest import ingest
from pipelines.workspace import Workspace
from profiling.keys import create_key_file
key = create_key_file(sys.argv[3])
ingest(sys.argv[1], Workspace(sys.argv[2]), key=key, progress=False)
"""


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for member in [process, *process.children(recursive=True)]:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total


def _run_measured(argv: list[str]) -> tuple[float, float, str, list[float]]:
    """(seconds, peak RSS of the process tree in GB, stdout, the peak in GB between one stdout line and the
    one before it: each stage's own peak) of a child process."""
    started = time.perf_counter()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = line_peak = last = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak, line_peak, last
        process = psutil.Process(child.pid)
        while not done.is_set():
            try:
                last = _tree_rss(process)
                peak, line_peak = max(peak, last), max(line_peak, last)
            except psutil.Error:
                return
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    errors: list[str] = []
    drain = threading.Thread(target=lambda: errors.extend(child.stderr), daemon=True)  # Spark logs a lot there
    drain.start()
    lines, line_peaks = [], []
    for line in child.stdout:  # each stage as it ends, on stderr: a long run shows where it is
        lines.append(line)
        line_peaks.append(line_peak / 2**30)
        line_peak = last  # a stage shorter than a sample holds at least what the last one saw
        print(f"  {line.strip()}  (its peak {line_peaks[-1]:.2f} GB, peak so far {peak / 2**30:.2f} GB)",
              file=sys.stderr, flush=True)
    child.wait()
    drain.join()
    out, err = "".join(lines), "".join(errors)
    done.set()
    sampler.join()
    if child.returncode:
        raise SystemExit(f"child failed ({child.returncode}):\n{err[-4000:]}")
    return time.perf_counter() - started, peak / 2**30, out, line_peaks


def _same_outputs(first: Path, second: Path) -> dict:
    """Whether two runs wrote the same portraits, and how alike their personalized lists are.

    The lists follow each engine's factor fit (the compiled solver on both, in other orders: the
    same quality, not the same numbers), so they are compared by the share of persons with a personalized
    list on either run who have one on both (``personalized_persons_on_both``), and by the mean share of
    the longer top-10 the two lists of such a person have in common (``personalized_top10_overlap``).
    The popular lists follow DP noise and are not compared.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    from pipelines.recommend import RECOMMENDATIONS_SCHEMA
    from profiling.portrait import portrait_schema

    def portraits(root: Path):
        table = ds.dataset(root / "outputs" / "portraits", format="parquet").to_table()
        return table.cast(portrait_schema()).sort_by("person_id")

    def top10(root: Path):
        return ds.dataset(root / "outputs" / "recommendations", format="parquet", schema=RECOMMENDATIONS_SCHEMA
                          ).to_table(columns=["person_id", "item_id"],
                                     filter=pc.field("personalized") & (pc.field("rank") <= 10))

    lists = [top10(first), top10(second)]
    lengths = [table.group_by("person_id").aggregate([("item_id", "count")]) for table in lists]
    # rows: (person_id, items_count_first, items_count_second) of persons with a list on either run
    both = lengths[0].join(lengths[1], "person_id", join_type="full outer", left_suffix="_first",
                           right_suffix="_second")
    on_both = both.filter(pc.and_(pc.is_valid(both["item_id_count_first"]), pc.is_valid(both["item_id_count_second"])))
    common = (lists[0].join(lists[1], ["person_id", "item_id"], join_type="inner")
              .group_by("person_id").aggregate([("item_id", "count")]))
    # rows: persons on both -> items their two lists share (0 when none)
    shared = on_both.join(common, "person_id", join_type="left outer")
    longer = pc.max_element_wise(shared["item_id_count_first"], shared["item_id_count_second"])
    overlap = pc.divide(pc.cast(shared["item_id_count"].fill_null(0), "float64"), pc.cast(longer, "float64"))
    return {"portraits_identical": portraits(first).equals(portraits(second)),
            "personalized_persons_on_both": round(on_both.num_rows / both.num_rows, 4) if both.num_rows else None,
            "personalized_top10_overlap": round(pc.mean(overlap).as_py(), 4) if on_both.num_rows else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engines", default="local,spark", help="comma-separated: local, spark")
    parser.add_argument("--spark-partitions", type=int,
                        help="partitions of the Spark jobs (default: spark.sql.shuffle.partitions)")
    parser.add_argument("--dir", help="scratch folder, kept and reused by a later run with the same --accounts and "
                                      "--seed (default: a temporary one, removed afterwards)")
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]

    from pipelines.synthetic import generate

    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    try:
        raw, ingested, key_file = scratch / "raw", scratch / "ingested", scratch / "keys" / "master.key"
        made = scratch / f"ingested-{args.accounts}-{args.seed}.done"
        if made.exists():  # a kept --dir with this workload: reuse it (synth and ingest not timed)
            synth_seconds = ingest_seconds = ingest_gb = None
        else:
            for old in (raw, ingested, key_file.parent):  # only what this benchmark made
                shutil.rmtree(old, ignore_errors=True)
            started = time.perf_counter()
            generate(raw, accounts=args.accounts, seed=args.seed, progress=False)
            synth_seconds = time.perf_counter() - started
            ingest_seconds, ingest_gb, _, _ = _run_measured([sys.executable, "-c", _INGEST, str(raw), str(ingested),
                                                          str(key_file)])
            made.touch()
        results = {}
        for engine in engines:
            workspace = scratch / f"ws-{engine}"
            shutil.rmtree(workspace, ignore_errors=True)
            shutil.copytree(ingested, workspace)
            extra = [str(args.spark_partitions)] if engine == "spark" and args.spark_partitions else []
            seconds, peak_gb, out, line_peaks = _run_measured([sys.executable, "-c", _RUN, str(workspace),
                                                               str(key_file), engine, *extra])
            rows = [json.loads(line) for line in out.splitlines()]
            stages = {row["stage"]: round(row["seconds"], 2) for row in rows}
            stage_peaks = {row["stage"]: round(gb, 2) for row, gb in zip(rows, line_peaks, strict=True)
                           if row["stage"] != "total"}
            results[engine] = {"seconds": round(seconds, 1), "peak_rss_gb": round(peak_gb, 2), "stages": stages,
                               "stage_peaks_gb": stage_peaks}
            print(f"{engine:>6}: {seconds:7.1f} s, peak {peak_gb:5.2f} GB  " +
                  ", ".join(f"{name} {s:.1f}" for name, s in stages.items()))
        same = _same_outputs(scratch / "ws-local", scratch / "ws-spark") if len(results) == 2 else {}
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)
    rounded = {"synth_seconds": synth_seconds, "ingest_seconds": ingest_seconds, "ingest_peak_rss_gb": ingest_gb}
    summary = {"accounts": args.accounts, "cpu": cpu_model(), "spark_partitions": args.spark_partitions,
               **{name: None if v is None else round(v, 2) for name, v in rounded.items()}, **{
                   f"{engine}_{name}": value for engine, r in results.items() for name, value in r.items()
                   if name != "stages"}, "stages": {engine: r["stages"] for engine, r in results.items()}}
    if "local" in results and ingest_seconds:
        summary["local_vs_ingest"] = round(results["local"]["seconds"] / ingest_seconds, 2)
    if "local" in results and "spark" in results:
        summary["spark_vs_local"] = round(results["spark"]["seconds"] / results["local"]["seconds"], 2)
        summary.update(same)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
