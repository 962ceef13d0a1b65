"""The privacy review: what each dataset's budget is, what was spent on which release, and what to look at.

``build_review`` gathers it as plain data (the JSON export for auditors); ``write_review``
writes ``review.md``, ``review.html``, ``review.json`` and ``cumulative_spend.png`` (one step
line per dataset and period: cumulative epsilon, or rho, over the span that holds releases,
with the budget in force as a dashed line and each budget change marked).

The review also prints the head hash of every ledger chain (``profiling.ledger_chain``): an
auditor who keeps the heads of one review can check that a later review's chains extend them
(rows counts grow, ``portrait ledger verify`` passes) and that nobody rebuilt a chain. It names
the ranking the non-personalized recommendation lists used (from the recommendations' Parquet
metadata in the ledger's workspace), when they were written, and every continual schedule
(``dp.continual``): its horizon, the epsilon charged once for it, the days released and the 95%
half-width of the last day's and the worst day's counts.

Flags: a broken chain; a budget raised (or its measure changed, or its per-release cap raised
or removed); a release whose cost is above its budget's per-release cap; a release charged but
never marked released (budget lost to a failure, no privacy lost); non-personalized lists ranked
by something other than the catalogue's order or a DP release in this ledger; every OpenDP
feature flag that was enabled when a release ran ("contrib" always; "floating-point", alias of
"idealized-numerics", or "honest-but-curious" would be named here if ever enabled).
"""

from __future__ import annotations

import html
import json
import math
import os
import sqlite3
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dp._mechanisms import ZCDP, enabled_features
from dp.budget import BudgetLedger
from profiling.file_modes import restrict_to_owner
from profiling.ledger_chain import ChainReport, verify_all
from profiling.transfer_log import transfer_summary

__all__ = ["build_review", "write_review"]


def _chains(ledger: BudgetLedger) -> list[ChainReport]:
    connection = sqlite3.connect(ledger.path, timeout=60.0)
    try:
        return verify_all(connection)
    finally:
        connection.close()


def _ranking(ledger: BudgetLedger, release_ids: set[str]) -> tuple[dict, dict | None]:
    """How the non-personalized lists of the ledger's workspace were ranked; a flag unless clearly private."""
    from pipelines.recommend import CATALOGUE_RANKING, non_personalized_ranking

    folder = ledger.path.parent / "outputs" / "recommendations"
    value = non_personalized_ranking(folder) if folder.is_dir() else None
    entry = {"folder": str(folder), "ranking": value}
    if value is None:
        entry["detail"] = "no recommendations written" if not folder.is_dir() else "not recorded in the lists"
        return entry, None
    if value == CATALOGUE_RANKING:
        entry["detail"] = "the catalogue's listing date (no personal data)"
        return entry, None
    release = value.removeprefix("dp_popularity:")
    if value.startswith("dp_popularity:") and release in release_ids:
        entry["detail"] = f"the DP popularity release {release} (charged in this ledger)"
        return entry, None
    entry["detail"] = f"{value}: not a DP release charged in this ledger"
    return entry, {"kind": "non-personalized ranking not shown to be private", "dataset": None, "period": None,
                   "release_id": None, "detail": f"{folder}: ranked by {value}"}


def _schedules(ledger: BudgetLedger, charges: list[dict]) -> list[dict]:
    """Each continual schedule: its horizon, the one charge, the days released and each day's error bound."""
    from dp.continual import ContinualCounter

    cost = {c["release_id"]: c for c in charges}
    entries = []
    for record in ledger.schedules():
        counter = ContinualCounter(ledger, record)
        days = counter.released_days()
        charge = cost.get(record["schedule_id"], {})
        last = days[-1]["day"] if days else None
        entries.append({
            **{k: record[k] for k in ("schedule_id", "name", "dataset", "period", "purpose", "query", "start",
                                      "horizon_days", "arity", "levels", "max_keys_per_person", "max_count_per_key",
                                      "mechanism", "noise_scale", "created_by", "created_at")},
            "keys": len(record["keys"]), "charged_once": {n: charge.get(n) for n in ("epsilon", "delta", "rho")},
            "days_released": len(days), "last_day": last, "days": days,
            "half_width_95_last_day": None if last is None else counter.half_width(last),
            "worst_day": counter.worst_day(), "half_width_95_worst_day": counter.half_width(counter.worst_day())})
    return entries


def build_review(ledger: BudgetLedger) -> dict:
    """Budgets, spend, releases, budget changes, chain heads and flags as one JSON-ready dict."""
    chains = _chains(ledger)
    charges = ledger.charges()
    by_budget: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in charges:
        by_budget[(row["dataset"], row["period"])].append(row)
    datasets, flags = [], []
    for chain in chains:
        if not chain.ok:
            flags.append({"kind": "ledger chain broken", "dataset": None, "period": None, "release_id": None,
                          "detail": chain.line()})
    changes = [dict(dataset=c.dataset, period=c.period, set_by=c.set_by, set_at=c.set_at, reason=c.reason,
                    old=c.old, new=c.new, raised=c.raised, describe=c.describe()) for c in ledger.changes()]
    for change in changes:
        if change["raised"]:
            flags.append({"kind": "budget raised", "dataset": change["dataset"], "period": change["period"],
                          "release_id": None, "detail": change["describe"]})
    registry = {d.name: d for d in ledger.datasets()}
    schedules = _schedules(ledger, charges)
    scheduled = {entry["schedule_id"] for entry in schedules}   # charged once, released day by day
    features = set(enabled_features())
    for row in charges:
        features.update(f for f in row["features"].split(",") if f)
    for budget in ledger.budgets():
        rows = by_budget.get((budget.dataset, budget.period), [])
        spent = {n: math.fsum(r[n] for r in rows) for n in ("epsilon", "delta", "rho")}
        releases: dict[str, dict] = {}
        for r in rows:
            release = releases.setdefault(r["release_id"], {
                "release_id": r["release_id"], "charged_at": r["charged_at"], "released_at": r["released_at"],
                "analyst": r["analyst"], "purpose": r["purpose"], "query": r["query"], "measurements": []})
            release["measurements"].append({k: r[k] for k in ("aggregate", "mechanism", "sensitivity", "noise_scale",
                                                              "epsilon", "delta", "rho", "half_width_95")})
        for release in releases.values():
            cost = {n: math.fsum(m[n] for m in release["measurements"]) for n in ("epsilon", "delta", "rho")}
            release.update(cost)
            cap, name = (budget.cap_rho, "rho") if budget.measure == ZCDP else (budget.cap_epsilon, "epsilon")
            if cap is not None and cost[name] > cap:
                flags.append({"kind": "over per-release cap", "dataset": budget.dataset, "period": budget.period,
                              "release_id": release["release_id"],
                              "detail": f"{name} {cost[name]:.6g} > cap {cap:.6g} ({release['query']})"})
            if release["released_at"] is None and release["release_id"] not in scheduled:
                flags.append({"kind": "charged, not released", "dataset": budget.dataset, "period": budget.period,
                              "release_id": release["release_id"],
                              "detail": "budget spent but no value handed out (a failure after the charge)"})
        total = {"epsilon": budget.epsilon, "delta": budget.delta, "rho": budget.rho}
        datasets.append({
            "dataset": budget.dataset, "period": budget.period, "measure": budget.measure,
            "composition": budget.composition, "budget": total,
            "spent": {n: (spent[n] if total[n] is not None else None) for n in total},
            "remaining": {n: (max(0.0, total[n] - spent[n]) if total[n] is not None else None) for n in total},
            "cap": {"epsilon": budget.cap_epsilon, "rho": budget.cap_rho},
            "tables": list(registry[budget.dataset].tables) if budget.dataset in registry else [],
            "privacy_unit": registry[budget.dataset].privacy_unit if budget.dataset in registry else None,
            "changes": [c for c in changes if (c["dataset"], c["period"]) == (budget.dataset, budget.period)],
            "set_by": budget.set_by, "set_at": budget.set_at, "releases": list(releases.values())})
    ranking, ranking_flag = _ranking(ledger, {row["release_id"] for row in charges})
    if ranking_flag is not None:
        flags.append(ranking_flag)
    for feature in sorted(features):
        flags.append({"kind": "OpenDP feature enabled", "dataset": None, "period": None, "release_id": None,
                      "detail": feature})
    return {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "ledger": str(ledger.path),
            "privacy_unit": "person (all of a person's rows and devices)", "opendp_features": sorted(features),
            "chains": [{"table": c.table, "rows": c.rows, "head": c.head, "ok": c.ok, "broken_at": c.broken_at,
                        "problem": c.problem, "migrated_rows": c.migrated_rows} for c in chains],
            "non_personalized_ranking": ranking, "budget_changes": changes, "datasets": datasets, "flags": flags,
            "schedules": schedules,
            "transfers": transfer_summary(ledger.path)}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC).replace(tzinfo=None)


def _plot(review: dict, path: Path) -> tuple[datetime, datetime] | None:
    """Cumulative spend of each dataset and period as a step line, one panel each, over the span of the releases.

    The shared time axis covers the first to the last release (padded by a twentieth, at least
    a minute: releases seconds apart do not get matplotlib's default years-wide axis). The dashed
    line is the budget in force: changes before the span set its level at the left edge, changes
    inside it are marked (red triangle: a raise). Returns the time axis' limits (None: no release).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    entries = [d for d in review["datasets"] if d["releases"]]
    released = [_moment(r["charged_at"]) for d in entries for r in d["releases"]]
    figure, axes = plt.subplots(max(1, len(entries)), 1, sharex=True, squeeze=False,
                                figsize=(9, 1.2 + 2.4 * max(1, len(entries))))
    axes = axes[:, 0]
    if not released:
        axes[0].text(0.5, 0.5, "no releases charged yet", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    else:
        pad = max((max(released) - min(released)) / 20, timedelta(minutes=1))
        start, end = min(released) - pad, max(released) + pad
        for axis, entry in zip(axes, entries):
            name = "rho" if entry["measure"] == ZCDP else "epsilon"
            times, values = [start], [0.0]
            for moment, cost in sorted((_moment(r["charged_at"]), r[name]) for r in entry["releases"]):
                times.append(moment)
                values.append(values[-1] + cost)
            axis.step([*times, end], [*values, values[-1]], where="post", linewidth=1.8, color="tab:blue",
                      label=f"{name} spent")
            changes = [(_moment(c["set_at"]), c["new"][name] or 0.0, c["raised"]) for c in entry["changes"]]
            before = [value for moment, value, _ in changes if moment <= start]
            inside = [(m, v, raised) for m, v, raised in changes if start < m <= end]
            levels = [before[-1] if before else math.nan] + [v for _, v, _ in inside]
            axis.step([start, *(m for m, _, _ in inside), end], [*levels, levels[-1]], where="post",
                      color="tab:orange", linestyle="--", linewidth=1.2, label=f"{name} budget")
            for moment, value, raised in inside:
                axis.plot([moment], [value], marker="^" if raised else "o", color="red" if raised else "tab:orange",
                          markersize=8, zorder=5, linestyle="none")
                axis.annotate("raised" if raised else "set", (moment, value), textcoords="offset points",
                              xytext=(5, -12), fontsize="small", color="red" if raised else "tab:orange")
            top = max([values[-1], *(v for v in levels if not math.isnan(v))])
            axis.set_ylim(0, top * 1.15 if top > 0 else 1.0)
            axis.set_ylabel(name)
            axis.set_title(f"{entry['dataset']} / {entry['period']}", fontsize="medium", loc="left")
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize="small", loc="upper left")
        axes[-1].set_xlim(start, end)
        locator = mdates.AutoDateLocator(minticks=3, maxticks=8)
        axes[-1].xaxis.set_major_locator(locator)
        axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        axes[-1].set_xlabel("charged at (UTC)")
    figure.suptitle("Cumulative privacy spend (solid) and the budget in force (dashed)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    limits = axes[-1].get_xlim() if released else None
    plt.close(figure)
    return None if limits is None else tuple(mdates.num2date(x).replace(tzinfo=None) for x in limits)


def _budget_text(budget: dict | None) -> str:
    if budget is None:
        return "none"
    names = ("rho",) if budget["measure"] == ZCDP else ("epsilon", "delta")
    caps = [f"cap {n} {budget[f'cap_{n}']:g}" for n in ("epsilon", "rho") if budget.get(f"cap_{n}") is not None]
    return ", ".join([f"{n} {budget[n]:g}" for n in names] + caps)


def _markdown(review: dict) -> str:
    lines = ["# Privacy review", "", (f"Generated {review['generated_at']} from `{review['ledger']}`. "
             f"Privacy unit: {review['privacy_unit']}."), "",
             "![cumulative spend](cumulative_spend.png)", "", "## Budgets", "",
             "| dataset | tables (privacy unit) | period | composition | budget | spent | remaining | releases |",
             "|---|---|---|---|---|---|---|---|"]
    for d in review["datasets"]:
        names = ("rho",) if d["measure"] == ZCDP else ("epsilon", "delta")

        def show(part: str, d: dict = d, names: tuple = names) -> str:
            return ", ".join(f"{n} {_fmt(d[part][n])}" for n in names)

        lines.append(f"| {d['dataset']} | {', '.join(d['tables'])} ({_fmt(d['privacy_unit'])}) | {d['period']} | "
                     f"{d['composition']} | {show('budget')} | {show('spent')} | {show('remaining')} | "
                     f"{len(d['releases'])} |")
    lines += ["", "## Flags", ""]
    lines += [f"- **{f['kind']}**: {f['detail']}" + (f" (release `{f['release_id']}`)" if f["release_id"] else "")
              for f in review["flags"]] or ["- none"]
    lines += ["", "## Ledger chains", "", "Compare these heads with the ones of the previous review: each chain must "
              "still verify and only have grown (`portrait ledger verify`).", "",
              "| table | rows | head (SHA-256) | state |", "|---|---|---|---|"]
    lines += [f"| {c['table']} | {c['rows']} | `{c['head']}` | " + (
        ("ok" + (f" ({c['migrated_rows']} rows predate the chain)" if c["migrated_rows"] else "")) if c["ok"] else
        "**BROKEN**" + (f" at row {c['broken_at']}" if c["broken_at"] else "") + f": {c['problem']}") + " |"
        for c in review["chains"]]
    lines += ["", "## Budget changes", "", "| set at | dataset | period | by | old | new | reason | raised |",
              "|---|---|---|---|---|---|---|---|"]
    for c in review["budget_changes"]:
        lines.append("| " + " | ".join(_fmt(v) for v in (
            c["set_at"], c["dataset"], c["period"], c["set_by"], _budget_text(c["old"]), _budget_text(c["new"]),
            c["reason"] or "-", "**yes**" if c["raised"] else "no")) + " |")
    ranking = review["non_personalized_ranking"]
    lines += ["", "## Non-personalized lists", "",
              f"Ranked by: {ranking['ranking'] or '-'} ({ranking['detail']}); read from `{ranking['folder']}`."]
    lines += ["", "## Cross-border transfers", "", "Per overseas receiver, from the transfer log (`portrait ledger "
              "verify` checks its chain; persons are distinct pseudonyms).", "",
              "| receiver | country | mechanism | transfers | rows | persons | refusals | last |", "|" + "---|" * 8]
    lines += [f"| {t['receiver']} | {t['country']} | {t['mechanism']} | {t['transfers']} | {t['rows']} | "
              f"{t['persons']} | {t['refusals']} | {t['last']} |" for t in review["transfers"]]
    if not review["transfers"]:
        lines.append("| none |" + " |" * 7)
    lines += ["", "## Continual schedules", "", "Each schedule's whole horizon is charged once, when it is "
              "created; its daily releases charge nothing (tree aggregation, `dp.continual`).", "",
              "| schedule | dataset | start | horizon (days) | tree | charged once | days released | last day | "
              "95% half-width, last day | worst day (95% half-width) |", "|" + "---|" * 10]
    for c in review["schedules"]:
        once = ", ".join(f"{n} {_fmt(v)}" for n, v in c["charged_once"].items() if v)
        lines.append(f"| {c['name']} `{c['schedule_id']}` | {c['dataset']} | {c['start']} | {c['horizon_days']} | "
                     f"arity {c['arity']}, {c['levels']} levels, {c['mechanism']} scale {_fmt(c['noise_scale'])} | "
                     f"{once or '-'} | {c['days_released']} | {_fmt(c['last_day'])} | "
                     f"{_fmt(c['half_width_95_last_day'])} | {c['worst_day']} ({_fmt(c['half_width_95_worst_day'])}) |")
    if not review["schedules"]:
        lines.append("| none |" + " |" * 9)
    lines += ["", "## Releases", "",
              ("| charged at | dataset | analyst | purpose | query | aggregate | mechanism | sensitivity | noise scale | "
              "epsilon | delta | rho | 95% half-width | released |"), "|" + "---|" * 14]
    for d in review["datasets"]:
        for r in d["releases"]:
            for m in r["measurements"]:
                lines.append("| " + " | ".join(_fmt(v) for v in (
                    r["charged_at"], d["dataset"], r["analyst"], r["purpose"], r["query"], m["aggregate"],
                    m["mechanism"], m["sensitivity"], m["noise_scale"], m["epsilon"], m["delta"], m["rho"],
                    m["half_width_95"], "yes" if r["released_at"] else "NO")) + " |")
    return "\n".join(lines) + "\n"


def _html(markdown: str) -> str:
    body = []
    in_table = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            body.append('<img src="cumulative_spend.png" alt="cumulative spend">')
        elif line.startswith("- "):
            body.append(f"<p>&bull; {html.escape(line[2:]).replace('**', '')}</p>")
        elif line:
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    style = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Privacy review</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def write_review(ledger: BudgetLedger, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write review.md, review.html, review.json and cumulative_spend.png into ``out_dir``; returns their paths."""
    folder = Path(out_dir)
    restrict_to_owner()  # the review names analysts and datasets: owner-only, like the ledger
    folder.mkdir(parents=True, exist_ok=True)
    review = build_review(ledger)
    paths = {"json": folder / "review.json", "markdown": folder / "review.md", "html": folder / "review.html",
             "plot": folder / "cumulative_spend.png"}
    staged = paths["json"].with_name(".review.json.tmp")
    staged.write_text(json.dumps(review, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(staged, paths["json"])
    markdown = _markdown(review)
    paths["markdown"].write_text(markdown, encoding="utf-8")
    paths["html"].write_text(_html(markdown), encoding="utf-8")
    _plot(review, paths["plot"])
    return paths
