"""Write the notebooks of this folder from the cell sources below (nbformat 4, no outputs).

    python notebooks/_build.py            # rewrite every notebook
    python notebooks/_build.py --check    # exit 1 if a committed notebook differs from its source here

The committed ``.ipynb`` files are what CI runs (``tests/test_notebooks.py``); edit the cells
here and rebuild, so that the notebooks stay reviewable as plain Python and carry no outputs.
Cell ids are derived from the notebook's name and the cell's position, so a rebuild without
changes writes identical files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str) -> tuple[str, str]:
    return ("markdown", text)


def code(text: str) -> tuple[str, str]:
    return ("code", text)


QUICKSTART = [
    md("""# Portrait quickstart: synthetic data to recommendations

This notebook runs the whole engine once, on made-up data, in a temporary folder, and looks at what it wrote:

1. **synthetic raw data**: seven tables shaped like a logistics and e-commerce business (accounts, orders, waybills, devices, device events, consent events, catalogue);
2. **a master key**, kept *outside* the workspace: it derives every pseudonym;
3. **ingest**: every raw row is validated into the workspace (the *identifiable zone*), or rejected with a reason;
4. **the job** (`run_pipeline`, the stages of `pipelines.run.STAGES` in order): consent ledger, pseudonymization (the *analytics zone*), the vault, the k-anonymity report, the differentially private popularity release, recommendations for the persons whose consent allows them, and more;
5. **a look at the outputs**: who the consent gate let through, how identifying the remaining person attributes are, the recommendation lists, and the portraits' feature distributions as differentially private statistics.

It takes well under a minute and writes nothing outside its temporary folder, which the last cell removes."""),
    code("""import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from dp import BudgetLedger
from pipelines.ingest import ingest
from pipelines.popularity import DATASET as POPULARITY_DATASET
from pipelines.run import run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import SqliteConsentStore
from profiling.keys import create_key_file

pd.set_option("display.width", 140)"""),
    md("""## A temporary folder with three parts

- `raw/`: the synthetic input, as a source system would deliver it (names, phone numbers, addresses, ID-card numbers: all made up);
- `workspace/`: everything Portrait writes (ingested tables, the analytics zone, the ledgers, the outputs);
- `keys/master.key`: the master key. Outputs are shared more widely than keys, so `run_pipeline` refuses a key file that lies inside the workspace.

`AS_OF` is the moment at which consent is evaluated and recommendations are made (UTC)."""),
    code("""scratch = tempfile.TemporaryDirectory(prefix="portrait-quickstart-")
root = Path(scratch.name)
raw_dir = root / "raw"
workspace = Workspace(root / "workspace")
key_file = root / "keys" / "master.key"
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
root"""),
    md("""## 1. Synthetic raw data

`generate` writes one Parquet folder per table. The same `seed` gives byte-identical files. 2,000 accounts make about 70,000 rows in all; amounts are in CNY unless an order says otherwise."""),
    code("""started = time.perf_counter()
rows_per_table = generate(raw_dir, accounts=2_000, seed=0, catalogue_items=2_000, progress=False)
print(f"generated in {time.perf_counter() - started:.1f} s")
pd.Series(rows_per_table, name="rows")"""),
    md("""The raw accounts hold direct identifiers (phone, nickname, email) and quasi-identifiers (birthday, gender, region). They stay in the identifiable zone; no analysis reads them."""),
    code("""pd.read_parquet(raw_dir / "accounts").head(3)"""),
    md("""## 2. The master key

`create_key_file` writes a new 256-bit key (version 1) with mode 600 and refuses to overwrite an existing one. Its `repr` shows a fingerprint, never the secret."""),
    code("""key = create_key_file(key_file)
print(key)
print("key file mode:", oct(key_file.stat().st_mode & 0o777))"""),
    md("""## 3. Ingest

Every row is either accepted into `workspace/ingested/<table>/` or rejected into `workspace/rejects/<table>/` with its reason: `rows in = accepted + rejected` for every table. Synthetic data is clean, so nothing is rejected here."""),
    code("""reports = ingest(raw_dir, workspace, key=key, progress=False)
pd.DataFrame([{"table": r.table, "rows in": r.rows_in, "accepted": r.accepted, "rejected": r.rejected}
              for r in reports.values()]).set_index("table")"""),
    md("""## 4. A privacy budget, then the job

The job releases item popularity (buyers per item) with differential privacy: ε = 0.1 per run, charged to the `orders` budget of the workspace's ledger **before** the value is computed. Without a budget the release is skipped, so a privacy reviewer sets one first. ε is unitless; the privacy unit is the person (all of a person's rows)."""),
    code("""ledger = BudgetLedger(workspace.ledger)
ledger.set_budget(POPULARITY_DATASET, epsilon=1.0, set_by="quickstart notebook", note="demo budget")
ledger.remaining(POPULARITY_DATASET)"""),
    code("""started = time.perf_counter()
summary = pd.DataFrame(run_pipeline(workspace, key_file, AS_OF, progress=False))
print(f"job finished in {time.perf_counter() - started:.1f} s; budget left:", ledger.remaining(POPULARITY_DATASET))
# one row per stage and table (or output); the other columns are stage-specific details
summary["table"] = summary["table"].fillna(summary.get("output", summary["table"]))
summary[["stage", "table", "rows"]].groupby(["stage", "table"], sort=False).sum()"""),
    md("""What the job wrote (Parquet folders and two reports):"""),
    code("""sorted(str(p.relative_to(workspace.root)) for p in workspace.root.glob("*/*") if not p.name.startswith("."))"""),
    md("""The analytics zone `workspace/pseudonymized/` is what every analysis reads: `person_id` is a keyed pseudonym of the account id, the birthday became an age band, the region a province; phone, nickname and email are gone."""),
    code("""pd.read_parquet(workspace.pseudonymized("accounts")).head(3)"""),
    md("""## 5a. The consent gate

Every stage asks the gate which persons its purpose may process at `AS_OF`, and every answer is audited in the ledger: eligible persons, and excluded persons by reason (never granted, revoked, a grant that lapsed with the June 2019 policy change and must be asked again, Do Not Disturb for marketing, cancelled accounts). Counts are persons."""),
    code("""with SqliteConsentStore(workspace.ledger) as store:
    audit = pd.DataFrame(store.audit_records())
# one audited answer per (job, purpose): eligible persons, then excluded persons by reason
gate = pd.DataFrame([{"job: purpose": f"{row.job}: {row.purpose}", "eligible": row.eligible, **row.excluded_reasons}
                     for row in audit.itertuples()]).set_index("job: purpose").fillna(0).astype(int)
gate"""),
    code("""ax = gate.plot.barh(stacked=True, figsize=(8, 0.4 * len(gate) + 1.5), colormap="tab10")
ax.set_xlabel("persons")
ax.set_title(f"Consent gate as of {AS_OF:%Y-%m-%d}: eligible and excluded, by reason")
ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left")
plt.show()"""),
    md("""## 5b. k-anonymity of the person-level attributes

Even without names, a combination of age band, gender and province can single a person out. `workspace/k-anonymity-report.json` counts the *equivalence classes* (persons sharing all three values) by size. A class smaller than k (10 by default) is a re-identification risk: `profiling.k_anonymity.enforce_k_anonymity` suppresses such classes from any person-level table before it leaves the engine. With only 2,000 synthetic persons spread over the whole country, many classes are small."""),
    code("""report = json.loads((workspace.root / "k-anonymity-report.json").read_text())
print({name: report[name] for name in ("k", "quasi_identifiers", "rows", "classes", "smallest_class",
                                       "rows_in_classes_below_k")})
sizes = pd.DataFrame(report["class_sizes"])
sizes["persons"] = sizes["size"] * sizes["classes"]
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2))
left.bar(sizes["size"], sizes["classes"], width=0.8)
left.set(xlabel="class size (persons sharing age band, gender, province)", ylabel="classes", yscale="log")
right.bar(sizes["size"], sizes["persons"], width=0.8, color=["tab:red" if s < report["k"] else "tab:green"
                                                              for s in sizes["size"]])
right.axvline(report["k"] - 0.5, color="black", linestyle="--", label=f"k = {report['k']}")
right.set(xlabel="class size", ylabel="persons in classes of that size")
right.legend()
plt.tight_layout()
plt.show()"""),
    md("""## 5c. Recommendations

`workspace/outputs/recommendations/` holds ten items per eligible person: `personalized` lists come from implicit-feedback factors and exact top-K scoring (the person's own purchases excluded, only items served in their province); persons who may be served but refused personalization, or bought nothing yet, get the non-personalized list (nothing of their own history), ranked by the DP popularity release when a budget allows one, else by the catalogue's listing date (no personal data; the output's metadata says which). Scores are unitless (inner products for personalized rows, noisy buyer counts or listing days for the others)."""),
    code("""recommendations = pd.read_parquet(workspace.outputs("recommendations"))
catalogue = pd.read_parquet(workspace.pseudonymized("catalogue"), columns=["item_id", "category", "price"])
print(recommendations.groupby("personalized")["person_id"].nunique().rename("persons").to_string())
recommendations.head(12)"""),
    code("""fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.5))
personalized = recommendations[recommendations["personalized"]]
left.hist(personalized["score"], bins=40)
left.set(xlabel="score (inner product, unitless)", ylabel="recommendations",
         title="Personalized scores")
shown = (recommendations.merge(catalogue, on="item_id")
         .groupby(["category", "personalized"]).size().unstack(fill_value=0))
shown = shown.loc[shown.sum(axis=1).sort_values().index[-15:]]
shown.plot.barh(stacked=True, ax=right)
right.set(xlabel="recommendations", title="Most recommended categories")
plt.tight_layout()
plt.show()"""),
    md("""The non-personalized lists are ranked by the DP popularity release (`workspace/outputs/popularity/`): noisy buyer counts with the half-width of their 95% confidence interval. The release cost ε = 0.1 of the `orders` budget:"""),
    code("""popularity = pd.read_parquet(workspace.outputs("popularity")).sort_values("buyers", ascending=False)
print(ledger.spent(POPULARITY_DATASET))
popularity.head(5)"""),
    md("""## Portraits, seen through differential privacy

The portrait stage writes one feature row per identity to `workspace/outputs/portraits/` (`frequency` in repeat purchase days, `recency_days`, `monetary_value_cny` per repeat purchase day, `category_share_<category>`, ...). Those rows are person-level: they serve personalization and stay in the analytics zone, so an analyst does not plot them. `dp.portrait_statistics.release_portrait_statistics` releases what such plots would show instead: histograms of recency, frequency and monetary value between public edges, and the mean share of each category over identities with orders, each with its 95% interval.

The privacy unit is the **identity** (one account with the devices only it used). A human may hold two accounts the data cannot link, so `accounts_per_human=2` calibrates the noise for any two identities together. The release costs ε = 1 of the `portraits` budget (registered per identity), in five equal releases; the portraits are read through the purpose check (only `personalization` may read them)."""),
    code("""from dp.portrait_statistics import release_portrait_statistics

portraits = pd.read_parquet(workspace.output("portraits", purpose="personalization"))
ledger.set_budget("portraits", epsilon=1.0, set_by="quickstart notebook", note="demo budget")
statistics = release_portrait_statistics(portraits, ledger=ledger, purpose="personalization", epsilon=1.0,
                                         accounts_per_human=2)
print("portraits budget left:", ledger.remaining("portraits"))
print(f"identities with orders: {statistics.identities_with_orders[0]:.0f} "
      f"± {statistics.identities_with_orders[1]:.0f} (95%)")
fig, axes = plt.subplots(1, 4, figsize=(17, 3.8))
labels = {"recency_days": "recency (days from first to last purchase)",
          "frequency": "frequency (repeat purchase days)",
          "monetary_value_cny": "monetary value (CNY per repeat purchase day)"}
for ax, (feature, histogram) in zip(axes, statistics.histograms.items()):
    position = np.arange(len(histogram))
    ax.bar(position, histogram["count"].clip(lower=0), yerr=histogram["count_ci95"], capsize=3)
    ax.set_xticks(position, histogram["bin"], rotation=45, ha="right")
    ax.set(xlabel=labels[feature], ylabel="identities (noisy, 95% CI)")
shares = statistics.category_shares.sort_values("share").tail(12)
axes[3].barh(shares["category"], shares["share"], xerr=shares["share_ci95"], capsize=2)
axes[3].set(xlabel="mean share of an identity's orders (95% CI)")
plt.tight_layout()
plt.show()"""),
    md("""## Clean up

Removes the temporary folder: raw data, workspace and key."""),
    code("""scratch.cleanup()
root.exists()"""),
]


DP_ANALYTICS = [
    md("""# Differentially private analytics with a budget

Every aggregate that leaves Portrait goes through `dp.PrivateSession`. This notebook:

1. prepares synthetic orders in the analytics zone (pseudonymous `person_id`, only persons whose consent allows product improvement);
2. has a reviewer set a **privacy budget** (ε, δ) for the `orders` dataset in the persistent ledger;
3. runs several queries (counts, sums, means, quantiles, a histogram; by group) and, after each, shows what is left of the budget; the noisy values are plotted with their 95% confidence intervals next to the true values, which we can only look at because the data is synthetic;
4. shows what happens when a query asks for more than is left;
5. writes the same three analyses the way a Tumult Analytics user would, side by side, with the identity as privacy unit;
6. writes the privacy review report for auditors.

**What is private.** The privacy unit is the *person*: all of a person's orders together. Every release is ε-DP (or (ε, δ)-DP) per person: adding or removing one person's whole history changes the probability of any output by at most a factor e^ε (plus δ). To make that hold, each person's contribution is *bounded* first (at most `max_partitions` groups and `max_rows_per_partition` rows per group), and values are clamped to declared `bounds`.

**What is charged.** A query's whole ε (and δ) is charged to the ledger, split equally between its aggregates, *before* any noisy value is computed, in one SQLite transaction. A crash after the charge loses budget, never privacy."""),
    code("""import datetime as dt
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
from IPython.display import Image, display

from dp import BudgetExceededError, BudgetLedger, PrivateSession, build_review, write_review
from pipelines.ingest import ingest
from pipelines.run import STAGES, RunContext
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.keys import create_key_file
from profiling.schema import CATEGORIES, PAYMENT_INSTITUTIONS

pd.set_option("display.width", 140)"""),
    md("""## Synthetic orders in the analytics zone

Synthetic raw data for 4,000 persons is ingested, and the job's first stages fill the consent ledger and write the analytics zone (`quickstart.ipynb` runs the whole job). Everything lives in a temporary folder; the key lies outside the workspace."""),
    code("""scratch = tempfile.TemporaryDirectory(prefix="portrait-dp-")
root = Path(scratch.name)
workspace = Workspace(root / "workspace")
key_file = root / "keys" / "master.key"
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

key = create_key_file(key_file)
generate(root / "raw", accounts=4_000, seed=1, catalogue_items=2_000, progress=False)
ingest(root / "raw", workspace, key=key, progress=False)
# Only the job's first stages: the consent ledger and the analytics zone are all this notebook needs.
context = RunContext(workspace=workspace, key=key, as_of=AS_OF, progress=False)
for stage in STAGES:
    if stage.name in ("verify-ingested", "consent-ledger", "pseudonymize"):
        stage.run(context)
sorted(p.name for p in workspace.root.iterdir() if not p.name.startswith("."))"""),
    md("""Analytics are a purpose like any other: the consent gate answers who may be processed for `product_improvement` at `AS_OF` (the answer is audited), and only those persons' orders placed by then are kept. Amounts are in currency major units; we keep the CNY orders (almost all of them)."""),
    code("""with SqliteConsentStore(workspace.ledger) as store:
    decision = ConsentGate(store).decide("product_improvement", AS_OF, job="dp analytics notebook")
print(f"eligible persons: {decision.eligible}, excluded: {decision.excluded}")

orders_table = ds.dataset(workspace.pseudonymized("orders")).to_table(
    columns=["person_id", "placed_at", "amount", "currency", "payment_institution", "category"])
orders = decision.keep(orders_table, "person_id", key=key).to_pandas()
orders = orders[(orders["currency"] == "CNY") & (orders["placed_at"] <= AS_OF)].reset_index(drop=True)
per_person = orders.groupby("person_id").size()
print(f"{len(orders)} orders of {len(per_person)} persons; orders per person: median {per_person.median():.0f}, "
      f"max {per_person.max()}")
orders.head()"""),
    md("""A few persons place hundreds of orders. Without bounding, one such person could move a count by hundreds, and the noise would have to be that large for everyone. Bounding each person to a few rows per group keeps the noise small, at the price of undercounting heavy buyers (a bias, not a privacy loss)."""),
    code("""fig, ax = plt.subplots(figsize=(6, 3))
ax.hist(per_person, bins=60)
ax.set(xlabel="orders per person", ylabel="persons", yscale="log", title="Contributions before bounding")
plt.show()"""),
    md("""## The budget

A privacy reviewer sets the total budget of the `orders` dataset: ε = 2.5 and δ = 1e-6 over all releases (basic composition: the ε of the releases add up, as do the δ). `cap_epsilon` is a per-release cap: a release above it is not refused, but the privacy review flags it."""),
    code("""ledger = BudgetLedger(workspace.ledger)
ledger.set_budget("orders", epsilon=2.5, delta=1e-6, cap_epsilon=0.5, set_by="privacy reviewer (notebook)",
                  note="exploration of synthetic orders")
session = PrivateSession(orders, dataset="orders", ledger=ledger, purpose="product_improvement",
                         analyst="notebook analyst")
spend_log = []


def show_budget(label):
    \"\"\"Remaining budget after a release, and a row for the spend plot at the end.\"\"\"
    remaining = session.remaining()
    spend_log.append({"after": label, **ledger.spent("orders")})
    print(f"after {label}: remaining epsilon {remaining['epsilon']:.3f}, delta {remaining['delta']:.2g}")


show_budget("setting the budget")
session"""),
    md("""## Query 1: orders and amount by category

Categories come from the public list of the data model (`profiling.schema.CATEGORIES`), so every category gets a row whether or not anyone bought in it, and the set of rows reveals nothing. Each person counts in at most 4 categories with at most 2 orders each, and each order's amount is clamped to [0, 1000] CNY. So one person can change a count by at most 8 (the sensitivity) and a sum by at most 8,000 CNY.

`explain()` shows the plan (mechanism, sensitivity, noise scale, cost, 95% half-width) and **charges nothing**; `release()` charges ε = 0.6, split between the two aggregates, then computes."""),
    code("""by_category = (session.query(epsilon=0.6)
               .group_by("category", keys=CATEGORIES)
               .bound(max_partitions=4, max_rows_per_partition=2)
               .count()
               .sum("amount", bounds=(0, 1000)))
print(by_category.describe())
by_category.explain()"""),
    code("""released = by_category.release()
show_budget("query 1 (count, sum by category)")
released.head()"""),
    md("""Noisy values with their 95% confidence intervals (`count_ci95`, `amount_sum_ci95` are half-widths), next to two true values, which only synthetic data lets us look at:

- **true, after bounding**: what the noise was added to. `kept_rows` below applies the same rule as the session (each person's rows in stored order; a row is kept if its category is among the person's first 4 and it is one of the person's first 2 rows in it). The interval should cover this value for about 95% of the categories.
- **true, all orders**: the gap to it is the *bounding bias*. Looser bounds cut the bias but add noise; choosing them is the analyst's trade-off, made before looking at the data."""),
    code("""def kept_rows(frame, by, max_partitions, max_rows_per_partition):
    \"\"\"Rows kept by per-person bounding (first groups and first rows of each person, in stored order).\"\"\"
    first_in_group = ~frame.duplicated(["person_id", by])
    group_number = first_in_group.groupby(frame["person_id"]).cumsum()   # 1 for the person's first group, ...
    group_number = group_number.where(first_in_group).groupby([frame["person_id"], frame[by]]).transform("max")
    row_number = frame.groupby(["person_id", by]).cumcount()              # 0 for the first row in the group
    return (group_number <= max_partitions) & (row_number < max_rows_per_partition)


clamped = orders.assign(amount=orders["amount"].clip(0, 1000))
kept = clamped[kept_rows(clamped, "category", max_partitions=4, max_rows_per_partition=2)]
truth = pd.DataFrame({
    "count (all)": clamped.groupby("category").size(), "count (bounded)": kept.groupby("category").size(),
    "sum (all)": clamped.groupby("category")["amount"].sum(), "sum (bounded)": kept.groupby("category")["amount"].sum(),
}).reindex(CATEGORIES).fillna(0)
covered = (released.set_index("category")["count"] - truth["count (bounded)"]).abs() <= released["count_ci95"].iloc[0]
print(f"the count's 95% interval covers the bounded true count in {covered.mean():.0%} of the categories")


def plot_with_ci(ax, labels, noisy, half_width, bounded, everything, *, xlabel):
    position = np.arange(len(labels))
    ax.errorbar(noisy, position, xerr=half_width, fmt="o", capsize=2, label="released (95% CI)")
    ax.scatter(bounded, position, marker="+", s=60, color="black", zorder=3, label="true, after bounding")
    ax.scatter(everything, position, marker="x", color="grey", zorder=3, label="true, all orders")
    ax.set_yticks(position, labels)
    ax.set(xlabel=xlabel)
    ax.legend(loc="lower right")


fig, (left, right) = plt.subplots(1, 2, figsize=(13, 7), sharey=True)
plot_with_ci(left, released["category"], released["count"], released["count_ci95"],
             truth["count (bounded)"], truth["count (all)"], xlabel="orders")
plot_with_ci(right, released["category"], released["amount_sum"] / 1e3, released["amount_sum_ci95"] / 1e3,
             truth["sum (bounded)"] / 1e3, truth["sum (all)"] / 1e3,
             xlabel="amount (thousand CNY, clamped to [0, 1000] per order)")
plt.tight_layout()
plt.show()"""),
    md("""## Query 2: mean order amount by payment institution

A mean is a noisy sum divided by a noisy count (each gets half of the aggregate's ε); its `_ci95` covers both noises, and is wide for the small groups. Each person counts with at most 5 orders at one payment institution; amounts are clamped to [0, 2000] CNY."""),
    code("""by_payment = (session.query(epsilon=0.4)
              .group_by("payment_institution", keys=PAYMENT_INSTITUTIONS)
              .bound(max_partitions=1, max_rows_per_partition=5)
              .mean("amount", bounds=(0, 2000))
              .release())
show_budget("query 2 (mean by payment institution)")
clamped = orders.assign(amount=orders["amount"].clip(0, 2000))
kept = clamped[kept_rows(clamped, "payment_institution", max_partitions=1, max_rows_per_partition=5)]
fig, ax = plt.subplots(figsize=(7, 3))
plot_with_ci(ax, by_payment["payment_institution"], by_payment["amount_mean"], by_payment["amount_mean_ci95"],
             kept.groupby("payment_institution")["amount"].mean().reindex(PAYMENT_INSTITUTIONS),
             clamped.groupby("payment_institution")["amount"].mean().reindex(PAYMENT_INSTITUTIONS),
             xlabel="mean order amount (CNY)")
plt.show()
by_payment"""),
    md("""## Query 3: quantiles of the order amount by payment institution

Quantiles use OpenDP's permute-and-flip selection over a grid of `candidates` evenly spaced points in `bounds` (here every 25 CNY from 0 to 5,000). Their `_ci95` is in **ranks** (rows), not CNY: with 95% probability the released point's rank misses the best grid point's by fewer rows than that, so there are no error bars in CNY to draw. Each person counts with at most 4 orders at one institution: the more rows a person may move, the wider the interval in ranks."""),
    code("""quantiles = (session.query(epsilon=0.4)
             .group_by("payment_institution", keys=PAYMENT_INSTITUTIONS)
             .bound(max_partitions=1, max_rows_per_partition=4)
             .quantile("amount", 0.5, bounds=(0, 5000), candidates=201)
             .quantile("amount", 0.9, bounds=(0, 5000), candidates=201)
             .release())
show_budget("query 3 (median and 90th percentile by payment institution)")
kept = orders[kept_rows(orders, "payment_institution", max_partitions=1, max_rows_per_partition=4)]
true_quantiles = kept.groupby("payment_institution")["amount"].quantile([0.5, 0.9]).unstack()
true_quantiles.columns = ["true q50, bounded", "true q90, bounded"]
true_quantiles["rows, bounded"] = kept.groupby("payment_institution").size()   # to read the ranks against
quantiles.set_index("payment_institution").join(true_quantiles).round(1)"""),
    md("""## Query 4: a histogram of order amounts

`histogram` groups by the bin of a value between public edges (amounts outside the edges are not counted). This one costs ε = 0.6, above the reviewer's per-release cap of 0.5: it is released, and the review will flag it."""),
    code("""edges = [0, 50, 100, 200, 500, 1000, 2000, 5000, 20000]
histogram = (session.query(epsilon=0.6)
             .histogram("amount", edges)
             .bound(max_partitions=3, max_rows_per_partition=5)
             .count()
             .release())
show_budget("query 4 (histogram, over the cap)")
true_bins = pd.cut(orders["amount"], edges, right=False).value_counts(sort=False).to_numpy()
fig, ax = plt.subplots(figsize=(8, 3))
position = np.arange(len(histogram))
ax.bar(position, histogram["count"], yerr=histogram["count_ci95"], capsize=3, label="released (95% CI)")
ax.scatter(position, true_bins, marker="x", color="black", zorder=3, label="true (synthetic data only)")
ax.set_xticks(position, histogram["amount"], rotation=30)
ax.set(xlabel="order amount (CNY)", ylabel="orders")
ax.legend()
plt.show()"""),
    md("""## When the budget runs out

Half of ε is left. A query asking for more is refused **before** anything is charged or computed: the error says what remains and what was asked, and the ledger is unchanged."""),
    code("""before = session.remaining()
try:
    session.query(epsilon=1.0).group_by("category", keys=CATEGORIES).count().release()
except BudgetExceededError as error:
    print(f"{type(error).__name__}: {error}")
assert session.remaining() == before
show_budget("the refused query (nothing charged)")"""),
    md("""A smaller query still fits. Without public keys, groups are *selected privately*: only categories whose noisy count passes a threshold appear (the threshold makes it unlikely that a group only one person is in shows up), which costs a δ as well (here 5e-7 of the 1e-6). Each person counts once, in one category."""),
    code("""selected = (session.query(epsilon=0.4, delta=5e-7)
            .group_by("category")
            .bound(max_partitions=1, max_rows_per_partition=1)
            .count()
            .release())
show_budget("query 5 (private selection of categories)")
print(f"{len(selected)} of {orders['category'].nunique()} categories passed the threshold")
selected.sort_values("count", ascending=False).head()"""),
    code("""spend = pd.DataFrame(spend_log)
fig, ax = plt.subplots(figsize=(8, 3))
ax.step(range(len(spend)), spend["epsilon"], where="post", marker="o")
ax.axhline(2.5, color="black", linestyle="--", label="budget ε = 2.5")
ax.set_xticks(range(len(spend)), spend["after"], rotation=25, ha="right")
ax.set(ylabel="ε spent", ylim=(0, 2.7))
ax.legend()
plt.show()"""),
    md("""## For Tumult Analytics users: the same analyses in Portrait

Three analyses written in Portrait, each next to the Tumult Analytics code it would take (shown, not run: Tumult Analytics 0.21 needs pandas < 2 and Spark, and cannot share this environment). What differs, in short:

| | Portrait | Tumult Analytics |
| --- | --- | --- |
| privacy unit | `privacy_unit="identity_id"`: each row attributed to its identity by `dp.units.attach_identity` (an account with the devices only it used; anonymous events of shared devices dropped) | `AddRowsWithID(id_column=...)` on a column you bring; no identity graph |
| one human, several accounts | `accounts_per_human=2`: every sensitivity doubled, and the charge records it | not modelled: evaluate at ε/2 yourself; nothing records that you did |
| budget | a reviewer's budget per dataset in the persistent ledger; every charge durable before the noise, with its query, mechanism and half-width | `Session.from_dataframe(privacy_budget=...)` in memory, for the session's life |
| bounds | `.bound(max_partitions=, max_rows_per_partition=)` | `.enforce(MaxGroupsPerID(col, k))`, `.enforce(MaxRowsPerGroupPerID(col, r))` or `.enforce(MaxRowsPerID(n))` |
| accuracy | `<aggregate>_ci95` beside each value; `session.epsilon_for(half_width=...)` before spending | noisy values; the interval from the noise scale is yours to work out |

The orders are person-keyed, so each order's identity is its account's (the graph never links two accounts); device events would also bring the anonymous events of the account's own devices. What is left of the `orders` budget does not cover three more releases: the reviewer raises it, with a note, and the review below flags the raise."""),
    code("""from dp import KeySet
from dp.units import attach_identity

ledger.set_budget("orders", epsilon=3.5, delta=1e-6, cap_epsilon=0.5, set_by="privacy reviewer (notebook)",
                  note="three comparison queries per identity")
identity_orders = attach_identity(orders)   # orders: (person_id, ..., identity_id)
by_identity = PrivateSession(identity_orders, dataset="orders", ledger=ledger, purpose="product_improvement",
                             privacy_unit="identity_id", accounts_per_human=2, analyst="notebook analyst")
by_identity"""),
    md("""### 1. Orders per payment institution and category, on public key sets

Every (institution, category) pair of the data model gets a row. Each identity counts in at most 5 pairs with at most 2 orders each. `epsilon_for` says first what ε a 95% half-width of 40 orders would cost.

Tumult Analytics:

```python
from tmlt.analytics import (AddRowsWithID, KeySet, MaxRowsPerID, PureDPBudget, QueryBuilder, Session)

session = Session.from_dataframe(privacy_budget=PureDPBudget(epsilon=0.9), source_id="orders",
                                 dataframe=spark_orders,   # with an identity_id column you computed
                                 protected_change=AddRowsWithID(id_column="identity_id"))
keys = KeySet.from_dict({"payment_institution": PAYMENT_INSTITUTIONS, "category": CATEGORIES})
query = QueryBuilder("orders").enforce(MaxRowsPerID(10)).groupby(keys).count()
counts = session.evaluate(query, PureDPBudget(epsilon=0.3 / 2))   # / 2: two accounts per human, by hand
```

`MaxGroupsPerID` names one grouping column; for a pair of columns `MaxRowsPerID(10)` bounds the same 10 rows per identity."""),
    code("""pairs = KeySet.from_dict({"payment_institution": list(PAYMENT_INSTITUTIONS), "category": list(CATEGORIES)})
pair_counts = (by_identity.query(epsilon=0.3).group_by(["payment_institution", "category"], keys=pairs)
               .bound(max_partitions=5, max_rows_per_partition=2).count())
print(f"epsilon for a 95% half-width of 40 orders: {by_identity.epsilon_for(half_width=40, query=pair_counts):.3f}")
released_pairs = pair_counts.release()
print(f"released at epsilon 0.3: each count ± {released_pairs['count_ci95'].iloc[0]:.0f} (95%)")
print("orders budget left:", by_identity.remaining())
released_pairs.pivot(index="category", columns="payment_institution", values="count").round(0).head(8)"""),
    md("""### 2. Mean order value per department, through a public join

A public table (one row per category: its department) is joined to each order row by row; the mean is a noisy sum over a noisy count, with an interval covering both. Each identity counts in at most 3 departments with at most 5 orders each, amounts clamped to [0, 2000] CNY.

Tumult Analytics:

```python
session.add_public_dataframe("departments", spark_departments)
query = (QueryBuilder("orders").join_public("departments")
         .enforce(MaxGroupsPerID("department", 3)).enforce(MaxRowsPerGroupPerID("department", 5))
         .groupby(KeySet.from_dict({"department": ["goods", "services", "coupons"]}))
         .average("amount", low=0, high=2000))
means = session.evaluate(query, PureDPBudget(epsilon=0.3 / 2))
```"""),
    code("""departments = pd.DataFrame({"category": list(CATEGORIES),
                            "department": ["services" if c.startswith("service_") else
                                           "coupons" if c.startswith("coupon_") else "goods" for c in CATEGORIES]})
department_means = (by_identity.query(epsilon=0.3).join_public(departments, on="category")
                    .group_by("department", keys=["goods", "services", "coupons"])
                    .bound(max_partitions=3, max_rows_per_partition=5)
                    .mean("amount", bounds=(0, 2000)).release())
print("orders budget left:", by_identity.remaining())
department_means"""),
    md("""### 3. The median order amount per payment institution

A quantile per group (OpenDP's permute-and-flip over 101 points of [0, 5000] CNY); its interval is in ranks. Each identity counts at one institution with at most 5 orders.

Tumult Analytics:

```python
query = (QueryBuilder("orders")
         .enforce(MaxGroupsPerID("payment_institution", 1))
         .enforce(MaxRowsPerGroupPerID("payment_institution", 5))
         .groupby(KeySet.from_dict({"payment_institution": PAYMENT_INSTITUTIONS}))
         .median("amount", low=0, high=5000))
medians = session.evaluate(query, PureDPBudget(epsilon=0.3 / 2))
```"""),
    code("""medians = (by_identity.query(epsilon=0.3).group_by("payment_institution", keys=list(PAYMENT_INSTITUTIONS))
           .bound(max_partitions=1, max_rows_per_partition=5)
           .quantile("amount", 0.5, bounds=(0, 5000), candidates=101).release())
print("orders budget left:", by_identity.remaining())
# the ledger records the unit and the group bound with every charge
print(ledger.charges("orders")[-1]["query"])
medians"""),
    md("""## The privacy review

`build_review` gathers budgets, spend, every release with its measurements (mechanism, sensitivity, noise scale, ε/δ, half-width) and flags as plain data; `write_review` writes it as Markdown, HTML, JSON and a plot of cumulative spend for auditors. Flags here: the histogram over the per-release cap, the raised budget, and the OpenDP features that were enabled (`contrib`)."""),
    code("""review = build_review(ledger)
orders_review = next(d for d in review["datasets"] if d["dataset"] == "orders")
print(json.dumps({k: orders_review[k] for k in ("budget", "spent", "remaining", "cap")}, indent=1))
pd.DataFrame(review["flags"])"""),
    code("""pd.DataFrame([{"query": r["query"], "epsilon": r["epsilon"], "delta": r["delta"],
               "measurements": len(r["measurements"])} for r in orders_review["releases"]])"""),
    code("""paths = write_review(ledger, root / "privacy-review")
print({kind: path.name for kind, path in paths.items()})
display(Image(filename=str(paths["plot"])))
print(paths["markdown"].read_text()[:1500])"""),
    md("""## Clean up"""),
    code("""scratch.cleanup()
root.exists()"""),
]


RECOMMENDATIONS = [
    md("""# Recommendations: factors, exact top-K scoring, and what the lists look like

Portrait recommends items from implicit feedback (purchases). This notebook takes the steps of the job's recommendation stage one at a time:

1. the consent gate: only persons who allow **personalization** are modelled;
2. implicit feedback: a persons x items matrix of recency-weighted purchase counts;
3. factors: `profiling.factors.ImplicitALS` learns a vector per person and per item (float32);
4. scoring: `profiling.scoring.top_k_batches` finds each person's K best items by inner product, exactly, excluding what they bought and what is not offered in their province;
5. a look at some lists next to the person's history, and at coverage and popularity;
6. a small run of the scoring benchmark: the compiled kernel against a plain numpy matrix product + `argpartition`.

**What is private.** Factors and lists are per person: no noise is added, so they stay in the analytics zone (pseudonymous `person_id`) and never leave the engine as such. Nothing here is charged to a privacy budget. The data is synthetic, which is the only reason we print per-person histories."""),
    code("""import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from IPython.display import display

import profiling
from pipelines.ingest import ingest
from pipelines.run import STAGES, RunContext
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.factors import ImplicitALS, recency_weighted_counts
from profiling.keys import create_key_file
from profiling.scoring import eligibility_by_province, top_k_batches

pd.set_option("display.width", 140)"""),
    md("""## Data: synthetic orders in the analytics zone

3,000 synthetic persons and 2,000 catalogue items in a temporary folder, ingested, then the job's first stages fill the consent ledger and write the analytics zone (`quickstart.ipynb` runs the whole job; here we take its recommendation stage apart)."""),
    code("""scratch = tempfile.TemporaryDirectory(prefix="portrait-recommendations-")
root = Path(scratch.name)
workspace = Workspace(root / "workspace")
key_file = root / "keys" / "master.key"
AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)

key = create_key_file(key_file)
generate(root / "raw", accounts=3_000, seed=2, catalogue_items=2_000, progress=False)
ingest(root / "raw", workspace, key=key, progress=False)
# Only the job's first stages: the consent ledger and the analytics zone are all this notebook needs.
context = RunContext(workspace=workspace, key=key, as_of=AS_OF, progress=False)
for stage in STAGES:
    if stage.name in ("verify-ingested", "consent-ledger", "pseudonymize"):
        stage.run(context)
catalogue = ds.dataset(workspace.pseudonymized("catalogue")).to_table(
    columns=["item_id", "category", "title", "price", "served_provinces", "active", "listed_at"])
print(f"{catalogue.num_rows} catalogue items")"""),
    md("""## 1. Who may be modelled

The gate's answer for `personalization` at `AS_OF` (audited). Persons who asked for non-personalized recommendations are left out of the model too: they get the popularity list."""),
    code("""with SqliteConsentStore(workspace.ledger) as store:
    decision = ConsentGate(store).decide("personalization", AS_OF, job="recommendations notebook")
eligible = decision.person_frame(key)
eligible = eligible[~eligible["non_personalized"]].reset_index(drop=True)
print(f"eligible: {decision.eligible} persons; excluded by reason: {decision.excluded}; "
      f"modelled: {len(eligible)}")"""),
    md("""## 2. Implicit feedback

One row per purchased item (an order lists several), placed by `AS_OF`. Each purchase weighs `0.5 ** (age_days / 90)`: one bought today counts 1, one bought 90 days ago 0.5. The matrix is persons x catalogue items, sparse."""),
    code("""orders = ds.dataset(workspace.pseudonymized("orders")).to_table(
    columns=["person_id", "placed_at", "items", "category"],
    filter=ds.field("person_id").isin(pa.array(eligible["person_id"], pa.string()))
    & (ds.field("placed_at") <= pa.scalar(AS_OF, pa.timestamp("us", tz="UTC"))))
person_index = pd.Index(eligible["person_id"])
item_index = pd.Index(catalogue["item_id"].to_pylist())
lengths = pc.list_value_length(orders["items"]).to_numpy()
purchases = pd.DataFrame({
    "person": np.repeat(person_index.get_indexer(orders["person_id"].to_pylist()), lengths),
    "item": item_index.get_indexer(pc.list_flatten(orders["items"]).to_pylist()),
    "age_days": np.repeat((AS_OF - orders["placed_at"].to_pandas()).dt.total_seconds().to_numpy() / 86_400, lengths),
})
purchases = purchases[purchases["item"] >= 0]   # items no longer in the catalogue
# rows: (person, item, age_days), one per purchased item
feedback = recency_weighted_counts(purchases["person"], purchases["item"], purchases["age_days"],
                                   persons=len(person_index), items=len(item_index), half_life_days=90.0)
has_history = np.diff(feedback.indptr) > 0
print(f"feedback: {feedback.shape[0]} persons x {feedback.shape[1]} items, {feedback.nnz} non-zero "
      f"({feedback.nnz / np.prod(feedback.shape):.2%}); persons with a purchase: {has_history.sum()}")"""),
    md("""## 3. Factors

Implicit ALS (alternating least squares with conjugate-gradient steps): 32 factors per person and item, 10 sweeps, deterministic for `random_state`. The estimator follows scikit-learn's contract: parameters in `__init__`, `fit` returns the model, fitted attributes end in `_`. Only persons with a purchase are fitted."""),
    code("""trained = np.flatnonzero(has_history)
started = time.perf_counter()
model = ImplicitALS(factors=32, iterations=10, random_state=0).fit(feedback[trained])
print(f"fitted in {time.perf_counter() - started:.1f} s:", model)
print("person factors", model.person_factors_.shape, model.person_factors_.dtype,
      "| item factors", model.item_factors_.shape, model.item_factors_.dtype)"""),
    md("""## 4. Exact top-K with exclusions

An item is allowed for a person when it is active, listed by `AS_OF`, and served in the person's province (`served_provinces` null: nationwide). Persons are grouped by province, so the allowed table is provinces x items, not persons x items. Items the person bought (any stored entry of their feedback row) are excluded too. `top_k_batches` yields batches of consecutive persons, so memory stays bounded however many persons there are."""),
    code("""accounts = ds.dataset(workspace.pseudonymized("accounts")).to_table(columns=["person_id", "province"]).to_pandas()
province = accounts.set_index("person_id")["province"].reindex(person_index[trained])
as_of_scalar = pa.scalar(AS_OF, pa.timestamp("us", tz="UTC"))
offered = pc.fill_null(pc.and_(catalogue["active"], pc.less_equal(catalogue["listed_at"], as_of_scalar)), False)
eligibility = eligibility_by_province(catalogue["served_provinces"].to_pylist(), offered.to_numpy(zero_copy_only=False),
                                      [None if pd.isna(p) else p for p in province])
print(f"allowed table: {eligibility.allowed.shape[0]} province groups x {eligibility.allowed.shape[1]} items; "
      f"items allowed per group: {eligibility.allowed.sum(axis=1).min()}-{eligibility.allowed.sum(axis=1).max()}")

K = 10
person_ids = pa.array(person_index[trained], pa.string())
item_ids = pa.array(item_index, pa.string())
lists = pa.Table.from_batches([batch.to_record_batch(person_ids, item_ids) for batch in top_k_batches(
    model.person_factors_, model.item_factors_, K, bought=feedback[trained], eligibility=eligibility)]).to_pandas()
# rows: (person_id, item_id, score, rank), rank from 1
lists.head(12)"""),
    md("""## 5a. Some lists next to the person's history

Two persons with a typical history (8 to 15 purchased items): what they bought, most recent first (age in days before `AS_OF`), and their ten recommendations (score: inner product, unitless). None of the recommended items is one they bought. Then, over everyone: how many of a person's recommendations fall in a category they already bought in."""),
    code("""items = catalogue.select(["item_id", "category", "title", "price"]).to_pandas()
history = (purchases.assign(person_id=person_index[purchases["person"]], item_id=item_index[purchases["item"]])
           .merge(items, on="item_id"))
# rows: (person, item, age_days, person_id, item_id, category, title, price), one per purchased item
purchased_items = history["person_id"].value_counts()
typical = purchased_items[(purchased_items >= 8) & (purchased_items <= 15)].index[:2]
for person in typical:
    bought = history[history["person_id"] == person].sort_values("age_days")
    shown = lists[lists["person_id"] == person].merge(items, on="item_id")
    assert not set(bought["item_id"]) & set(shown["item_id"])
    print(f"person {person[:12]}...: {len(bought)} purchased items")
    display(bought[["age_days", "category", "title", "price"]].round({"age_days": 0}).head(8))
    display(shown[["rank", "score", "category", "title", "price"]])

bought_categories = history[["person_id", "category"]].drop_duplicates().assign(bought_before=True)
familiar = (lists.merge(items, on="item_id").merge(bought_categories, on=["person_id", "category"], how="left")
            ["bought_before"].fillna(False).astype(bool))
print(f"{familiar.mean():.0%} of recommendations are in a category the person bought in before")"""),
    md("""## 5b. Coverage and popularity

*Coverage*: the share of offered items that appear in at least one list. *Popularity bias*: how often an item is recommended against how many persons bought it. A recommender that only echoes the bestsellers has low coverage and a steep concentration curve."""),
    code("""buyers = pd.Series(np.bincount(feedback[trained].indices, minlength=len(item_index)), index=item_index)
times_recommended = lists["item_id"].value_counts().reindex(item_index, fill_value=0)
offered_items = int(np.asarray(offered).sum())
print(f"coverage: {int((times_recommended > 0).sum())} of {offered_items} offered items "
      f"({(times_recommended > 0).sum() / offered_items:.1%}) appear in some list")

fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
left.scatter(buyers + 1, times_recommended + 1, s=6, alpha=0.5)
left.set(xscale="log", yscale="log", xlabel="buyers + 1", ylabel="times recommended + 1",
         title="Popularity vs recommendations")
for name, counts in (("purchases", buyers), ("recommendations", times_recommended)):
    ordered = np.sort(counts.to_numpy())[::-1]
    right.plot(np.arange(1, len(ordered) + 1) / len(ordered), np.cumsum(ordered) / ordered.sum(), label=name)
right.set(xlabel="share of items (most frequent first)", ylabel="share of all", title="Concentration")
right.legend()
plt.tight_layout()
plt.show()"""),
    md("""## 6. A small run of the scoring benchmark

The full benchmark (`benchmarks/bench_scoring.py`: 200,000 persons x 50,000 items) compares the kernel with the bare matrix product, `implicit` and FAISS. Here, its workload at 20,000 persons x 5,000 items (d = 64, K = 10, 20 bought items excluded per person; random float32 factors from `benchmarks/_scoring_workload.py`) against the plain numpy way: a block of scores by matrix product, bought items set to -inf, `argpartition` for the K best, then a sort of those K. Both are exact, so the lists must agree (up to exact ties). Times are the best of 3 (numpy: of 2), in persons per second; the machine may be shared, so expect some noise."""),
    code("""def benchmarks_folder():
    \"\"\"The checkout's ``benchmarks/``: above the working folder, or next to an editable install.\"\"\"
    for folder in (Path.cwd(), *Path.cwd().parents, Path(profiling.__file__).resolve().parents[1]):
        if (folder / "benchmarks" / "_scoring_workload.py").is_file():
            return folder / "benchmarks"
    raise FileNotFoundError("benchmarks/_scoring_workload.py not found; start Jupyter inside the Portrait checkout")


benchmarks = benchmarks_folder()
sys.path.insert(0, str(benchmarks))
from _scoring_workload import make_bought, make_factors  # noqa: E402

PERSONS, ITEMS, DIMS, EXCLUDED = 20_000, 5_000, 64, 20
person_factors, item_factors = make_factors(PERSONS, ITEMS, DIMS, seed=0)
bought = make_bought(PERSONS, ITEMS, EXCLUDED, seed=0)


def kernel_top_k():
    top = np.empty((PERSONS, K), dtype=np.int32)
    for batch in top_k_batches(person_factors, item_factors, K, bought=bought):
        top[batch.persons] = batch.items
    return top


def numpy_top_k(block=2_048):
    top = np.empty((PERSONS, K), dtype=np.int64)
    for start in range(0, PERSONS, block):
        stop = min(start + block, PERSONS)
        scores = person_factors[start:stop] @ item_factors.T
        rows = bought[start:stop]
        scores[np.repeat(np.arange(stop - start), np.diff(rows.indptr)), rows.indices] = -np.inf
        best = np.argpartition(scores, -K, axis=1)[:, -K:]
        order = np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1, kind="stable")
        top[start:stop] = np.take_along_axis(best, order, axis=1)
    return top


def best_of(run, repeats=3):
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return min(times), result


kernel_top_k()   # compile (or load the cached compilation) outside the timing
kernel_seconds, kernel_lists = best_of(kernel_top_k)
numpy_seconds, numpy_lists = best_of(numpy_top_k, repeats=2)
agree = np.mean([set(a) == set(b) for a, b in zip(kernel_lists, numpy_lists, strict=True)])
timings = pd.Series({"kernel (top_k_batches)": PERSONS / kernel_seconds,
                     "numpy matmul + argpartition": PERSONS / numpy_seconds}, name="persons per second")
print(f"same top-{K} sets for {agree:.2%} of persons; kernel is {numpy_seconds / kernel_seconds:.1f}x numpy")
timings.round(0)"""),
    code("""fig, ax = plt.subplots(figsize=(7, 2.5))
timings.plot.barh(ax=ax)
ax.set(xlabel="persons per second (higher is better)",
       title=f"Top-{K} of {ITEMS:,} items, d = {DIMS}, {EXCLUDED} exclusions, {PERSONS:,} persons")
plt.show()"""),
    md("""## Clean up"""),
    code("""sys.path.remove(str(benchmarks))
scratch.cleanup()
root.exists()"""),
]

NOTEBOOKS = {"quickstart": QUICKSTART, "dp_analytics": DP_ANALYTICS, "recommendations": RECOMMENDATIONS}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """One notebook, nbformat 4, outputs empty, cell ids ``<name>-<position>``."""
    notebook = new_notebook(metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    })
    for position, (kind, source) in enumerate(cells):
        make = new_markdown_cell if kind == "markdown" else new_code_cell
        notebook.cells.append(make(source, id=f"{name.replace('_', '-')}-{position:02d}"))
    nbformat.validate(notebook)
    return notebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a difference")
    args = parser.parse_args(argv)
    stale = []
    for name, cells in NOTEBOOKS.items():
        path = HERE / f"{name}.ipynb"
        text = nbformat.writes(build(name, cells)) + "\n"
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print(f"out of date with notebooks/_build.py: {', '.join(stale)}; run python notebooks/_build.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
