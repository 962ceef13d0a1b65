"""Account-risk scoring against the synthetic ground truth: precision-recall AUC of the model and the rules.

    python benchmarks/bench_risk.py [--accounts 50000] [--seed 7] [--dir DIR]

Generates the raw data set with its ground truth apart (``portrait synth --truth``: planted account
takeovers and order bursts, about 1% of accounts in the year before 2026-11-01; with ``--dir``,
reuses ``DIR/raw`` and ``DIR/raw-truth`` when both are there), ingests it, and runs the
``consent-ledger``, ``pseudonymize`` and ``risk`` stages of ``portrait run`` (ingest and the job
never see the truth). The stage fits its isolation forest on the 26 weeks before the scored
period and scores the 13 weeks before the as-of moment, so the evaluation is on a later, held-out
time period. Only this evaluation maps the truth's accounts to PERSON pseudonyms, with the key.

A scored person-week is positive when a planted incident of its person overlaps the week.
``pr_auc`` is scikit-learn's average precision (the step-wise area under the precision-recall
curve) of the model's score and of the rules' score over all scored person-weeks;
``recall_at_1pct`` is the share of positive weeks among the 1% highest scored (ties broken
pessimistically for the rules: the rules' score has six values). Last line: one JSON object
with both AUCs, their ratio, the counts, the CPU model and the timings in seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score

from _machine import cpu_model
from _synthetic_job import synthetic_job
from pipelines.risk import read_risk
from pipelines.workspace import Workspace
from profiling.pseudonyms import PERSON, pseudonymize

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
STAGES = ("consent-ledger", "pseudonymize", "risk")


def labelled_scores(workspace: Workspace, truth: Path, key) -> pd.DataFrame:
    """The scored person-weeks with ``label`` (an incident overlaps the week) and the incident's pattern."""
    scores = read_risk(workspace, "scores", purpose="transaction_safety").to_pandas()
    incidents = pq.read_table(truth / "risk_incidents").to_pandas()
    incidents["person_id"] = pseudonymize(pa.array(incidents["account_id"]), key, PERSON,
                                          identifier="account_id").to_pylist()
    joined = scores.reset_index().merge(incidents, on="person_id", how="inner")
    overlapping = joined[(joined["started_at"] < joined["week_end"]) & (joined["ended_at"] >= joined["week_start"])]
    scores["label"] = scores.index.isin(overlapping["index"])
    scores["pattern"] = overlapping.drop_duplicates("index").set_index("index")["pattern"].reindex(scores.index)
    return scores


def recall_at(scores: np.ndarray, labels: np.ndarray, share: float) -> float:
    """Share of positives among the ``share`` highest scores; ties at the cut count against the score."""
    top = max(1, int(round(share * len(scores))))
    order = np.lexsort((labels, -scores))   # among equal scores, negatives first
    return float(labels[order[:top]].sum() / max(labels.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", help="keep the data here (reused when already there) instead of a scratch folder")
    args = parser.parse_args()
    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-risk-"))
    try:
        job = synthetic_job(scratch, accounts=args.accounts, seed=args.seed, as_of=AS_OF, stages=STAGES)
        workspace, truth, key, timings = job.workspace, job.truth, job.key, job.seconds
        scores = labelled_scores(workspace, truth, key)
        model_info = json.loads((workspace.outputs("risk") / "_model.json").read_text(encoding="utf-8"))
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)

    labels = scores["label"].to_numpy()
    if not labels.any():
        raise SystemExit("no planted incident falls in the scored weeks; use more --accounts")
    model, rules = scores["score"].to_numpy(), scores["rule_score"].to_numpy()
    model_auc, rules_auc = average_precision_score(labels, model), average_precision_score(labels, rules)
    by_pattern = {}
    for pattern in sorted(scores["pattern"].dropna().unique()):
        mine = labels & (scores["pattern"] == pattern).to_numpy()
        by_pattern[pattern] = {"positive_weeks": int(mine.sum()),
                               "model_recall_at_1pct": round(recall_at(model, mine, 0.01), 4),
                               "rules_recall_at_1pct": round(recall_at(rules, mine, 0.01), 4)}
    summary = {
        "accounts": args.accounts, "seed": args.seed,
        "scored_person_weeks": len(scores), "training_person_weeks": model_info["training_person_weeks"],
        "positive_weeks": int(labels.sum()), "base_rate": round(float(labels.mean()), 6),
        "model_pr_auc": round(float(model_auc), 4), "rules_pr_auc": round(float(rules_auc), 4),
        "model_over_rules": round(float(model_auc / rules_auc), 3) if rules_auc else None,
        "model_recall_at_1pct": round(recall_at(model, labels, 0.01), 4),
        "rules_recall_at_1pct": round(recall_at(rules, labels, 0.01), 4),
        "by_pattern": by_pattern,
        "cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)),
        "seconds": timings,
    }
    print(f"held-out quarter: {len(scores)} person-weeks, {summary['positive_weeks']} with a planted incident; "
          f"PR-AUC isolation forest {summary['model_pr_auc']:.3f}, rules {summary['rules_pr_auc']:.3f} "
          f"(x{summary['model_over_rules']}); risk stage {timings.get('risk')} s")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
