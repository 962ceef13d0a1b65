"""``portrait budget ...``: set privacy budgets, schedule continual releases, show the spend, write the review."""

from __future__ import annotations

import argparse

import pyarrow as pa
import pyarrow.dataset as ds

from dp import BudgetLedger, build_review, write_review
from dp.continual import ContinualCounter
from dp.budget import DEFAULT_PERIOD
from pipelines.commands._shared import (
    add_workspace_argument,
    existing_ledger,
    existing_workspace,
    format_table,
    outside_workspace,
)
from pipelines.popularity import DATASET, ITEMS_PER_PERSON, PURPOSE, SCHEDULE
from pipelines.workspace import Workspace

__all__ = ["register"]


def _ledger(args: argparse.Namespace) -> BudgetLedger:
    """The ledger of an existing workspace (created on first use): a mistyped path creates nothing."""
    return BudgetLedger(existing_workspace(args.workspace).ledger)


def _existing_ledger(args: argparse.Namespace) -> BudgetLedger:
    """The ledger of an existing workspace, for the commands that only read it (nothing is created)."""
    return BudgetLedger(existing_ledger(existing_workspace(args.workspace)))


def _show_value(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def _set(args: argparse.Namespace) -> None:
    budget = _ledger(args).set_budget(args.dataset, args.period, epsilon=args.epsilon, delta=args.delta,
                                      rho=args.rho, cap_epsilon=args.cap_epsilon, cap_rho=args.cap_rho,
                                      set_by=args.set_by, note=args.note)
    total = f"rho {budget.rho:g}" if budget.rho is not None else f"epsilon {budget.epsilon:g}, delta {budget.delta:g}"
    print(f"budget of {budget.dataset!r} for period {budget.period!r}: {total} ({budget.composition})")


def _show(args: argparse.Namespace) -> None:
    review = build_review(_existing_ledger(args))
    rows = [{"dataset": d["dataset"], "period": d["period"], "measure": d["measure"],
             **{f"{n} budget": _show_value(d["budget"][n]) for n in ("epsilon", "delta", "rho")},
             **{f"{n} spent": _show_value(d["spent"][n]) for n in ("epsilon", "delta", "rho")},
             **{f"{n} left": _show_value(d["remaining"][n]) for n in ("epsilon", "delta", "rho")},
             "releases": len(d["releases"])} for d in review["datasets"]]
    print(format_table(rows))
    if review["schedules"]:
        print("\ncontinual schedules")
        print(format_table([{k: s[k] for k in ("name", "dataset", "schedule_id", "start", "horizon_days",
                                                "days_released", "last_day")} for s in review["schedules"]]))
    for flag in review["flags"]:
        print(f"flag: {flag['kind']}: {flag['detail']}")


def _schedule(args: argparse.Namespace) -> None:
    workspace = existing_workspace(args.workspace)
    keys = _catalogue_items(workspace)
    counter = ContinualCounter.create(
        BudgetLedger(workspace.ledger), name=SCHEDULE, dataset=DATASET, purpose=PURPOSE, by="item_id",
        keys=keys.column("item_id").to_pylist(), start=args.start, horizon_days=args.days, epsilon=args.epsilon,
        rho=args.rho, max_keys_per_person=ITEMS_PER_PERSON, analyst=args.set_by, period=args.period)
    charge = counter.record
    print(f"schedule {charge['name']!r} ({counter.schedule_id}) of {charge['dataset']!r}: {charge['horizon_days']} daily "
          f"releases from {charge['start']}, charged once; tree arity {counter.shape.arity}, "
          f"{counter.shape.levels} levels, worst-day 95% half-width "
          f"{counter.half_width(counter.worst_day()):.4g} buyers (day {counter.worst_day()})")


def _catalogue_items(workspace: Workspace) -> pa.Table:
    """The catalogue's item ids, the schedule's public keys: from the analytics zone, or before the first run
    from the ingested catalogue (it holds no person's data, and the door passes its item ids unchanged)."""
    published = workspace.pseudonymized("catalogue")
    if published.is_dir():
        return ds.dataset(workspace.verified(published), format="parquet").to_table(columns=["item_id"])
    return workspace.read("catalogue", ["item_id"])


def _report(args: argparse.Namespace) -> None:
    out = outside_workspace(args.out, Workspace(args.workspace))
    paths = write_review(_existing_ledger(args), out)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def register(commands: argparse._SubParsersAction) -> None:
    budget = commands.add_parser("budget", help="privacy budgets: set them, show the spend, write the privacy review")
    actions = budget.add_subparsers(dest="budget_command", required=True, metavar="ACTION")

    set_cmd = actions.add_parser("set", help="set (or replace) the budget of a dataset for a period")
    add_workspace_argument(set_cmd)
    set_cmd.add_argument("--dataset", required=True, help="registered dataset: the analytics-zone table whose "
                         "releases are charged to it, e.g. orders")
    set_cmd.add_argument("--period", default=DEFAULT_PERIOD, help=f"period label, e.g. 2026-11 (default {DEFAULT_PERIOD})")
    set_cmd.add_argument("--epsilon", type=float, help="total epsilon (basic composition)")
    set_cmd.add_argument("--delta", type=float, default=0.0, help="total delta with --epsilon (default 0)")
    set_cmd.add_argument("--rho", type=float, help="total rho instead of epsilon (zero-concentrated DP)")
    set_cmd.add_argument("--cap-epsilon", type=float, help="per-release epsilon the review flags when exceeded")
    set_cmd.add_argument("--cap-rho", type=float, help="per-release rho the review flags when exceeded")
    set_cmd.add_argument("--set-by", help="reviewer's name (default: the login name)")
    set_cmd.add_argument("--note", default="", help="why, for the audit trail (required to replace a budget in "
                         "force; the review flags every raise)")
    set_cmd.set_defaults(handler=_set)

    show = actions.add_parser("show", help="budget, spent and remaining per dataset and period, and the flags")
    add_workspace_argument(show)
    show.set_defaults(handler=_show)

    schedule = actions.add_parser("schedule", help="charge a horizon of daily popularity releases once "
                                  "(a continual counter: the daily job then releases through it, charging nothing)")
    add_workspace_argument(schedule)
    schedule.add_argument("--start", required=True, help="ISO 8601 moment day 1 begins, with its offset, e.g. "
                          "2026-11-01T00:00:00Z; day d is released by the first run at or after start + d days")
    schedule.add_argument("--days", type=int, default=365, help="horizon in days (default 365)")
    schedule.add_argument("--epsilon", type=float, help="epsilon of the whole horizon (an epsilon budget)")
    schedule.add_argument("--rho", type=float, help="rho of the whole horizon instead (a rho budget)")
    schedule.add_argument("--period", default=DEFAULT_PERIOD, help=f"budget period charged (default {DEFAULT_PERIOD})")
    schedule.add_argument("--set-by", help="who schedules it (default: the login name)")
    schedule.set_defaults(handler=_schedule)

    report = actions.add_parser("report", help="write the privacy review (Markdown, HTML, JSON, PNG plot)")
    add_workspace_argument(report)
    report.add_argument("--out", required=True, help="folder for review.md, review.html, review.json, cumulative_spend.png")
    report.set_defaults(handler=_report)
