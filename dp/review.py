"""The privacy review: what each dataset's budget is, what was spent on which release, and what to look at.

``build_review`` gathers it as plain data (the JSON export for auditors); ``write_review``
writes ``review.md``, ``review.html``, ``review.json`` and ``cumulative_spend.png`` (one line
per dataset and period: cumulative epsilon, or rho, over time).

Flags: a release whose cost is above its budget's per-release cap; a release charged but
never marked released (budget lost to a failure, no privacy lost); every OpenDP feature flag
that was enabled when a release ran ("contrib" always; "floating-point", alias of
"idealized-numerics", or "honest-but-curious" would be named here if ever enabled).
"""

from __future__ import annotations

import html
import json
import math
import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

from dp._mechanisms import ZCDP, enabled_features
from dp.budget import BudgetLedger

__all__ = ["build_review", "write_review"]


def build_review(ledger: BudgetLedger) -> dict:
    """Budgets, spend, releases and flags as one JSON-ready dict."""
    charges = ledger.charges()
    by_budget: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in charges:
        by_budget[(row["dataset"], row["period"])].append(row)
    datasets, flags = [], []
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
            if release["released_at"] is None:
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
            "set_by": budget.set_by, "set_at": budget.set_at, "releases": list(releases.values())})
    for feature in sorted(features):
        flags.append({"kind": "OpenDP feature enabled", "dataset": None, "period": None, "release_id": None,
                      "detail": feature})
    return {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"), "ledger": str(ledger.path),
            "privacy_unit": "person (all of a person's rows and devices)", "opendp_features": sorted(features),
            "datasets": datasets, "flags": flags}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _plot(review: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 4))
    for entry in review["datasets"]:
        name = "rho" if entry["measure"] == ZCDP else "epsilon"
        points = sorted((datetime.fromisoformat(r["charged_at"]), r[name]) for r in entry["releases"])
        times, values, running = [points[0][0]] if points else [], [0.0] if points else [], 0.0
        for moment, cost in points:
            running += cost
            times.append(moment)
            values.append(running)
        if times:
            line, = axis.step(times, values, where="post", label=f"{entry['dataset']} / {entry['period']} ({name})")
            axis.axhline(entry["budget"][name], color=line.get_color(), linestyle="--", linewidth=0.8)
    axis.set_ylim(bottom=0)
    axis.set_xlabel("time (UTC)")
    axis.set_ylabel("cumulative spend (dashed: budget)")
    axis.set_title("Privacy budget spent over time")
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize="small")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _markdown(review: dict) -> str:
    lines = ["# Privacy review", "", (f"Generated {review['generated_at']} from `{review['ledger']}`. "
             f"Privacy unit: {review['privacy_unit']}."), "",
             "![cumulative spend](cumulative_spend.png)", "", "## Budgets", "",
             "| dataset | period | composition | budget | spent | remaining | releases |", "|---|---|---|---|---|---|---|"]
    for d in review["datasets"]:
        names = ("rho",) if d["measure"] == ZCDP else ("epsilon", "delta")

        def show(part: str, d: dict = d, names: tuple = names) -> str:
            return ", ".join(f"{n} {_fmt(d[part][n])}" for n in names)

        lines.append(f"| {d['dataset']} | {d['period']} | {d['composition']} | {show('budget')} | {show('spent')} | "
                     f"{show('remaining')} | {len(d['releases'])} |")
    lines += ["", "## Flags", ""]
    lines += [f"- **{f['kind']}**: {f['detail']}" + (f" (release `{f['release_id']}`)" if f["release_id"] else "")
              for f in review["flags"]] or ["- none"]
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
