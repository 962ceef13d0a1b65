"""Nothing exact leaves beside a release, and a query is validated fully before anything is charged."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from dp import BudgetLedger, PrivacyParameterError, PrivateSession
from portrait_cli import run_cli
from profiling.consent import ConsentGate, SqliteConsentStore
from profiling.errors import PortraitError


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks") / "demo"
    assert run_cli("demo", "--dir", str(root), "--accounts", "200") == 0
    ws = root / "workspace"
    assert run_cli("budget", "set", "--workspace", str(ws), "--dataset", "orders", "--epsilon", "50",
                   "--delta", "1e-5", "--note", "release checks") == 0
    return ws, root / "keys" / "master.key"


def _dp(demo, *argv: str) -> list[str]:
    ws, key = demo
    return ["dp", "--workspace", str(ws), "--key-file", str(key), "--as-of", "2026-11-01", "--table", "orders", *argv]


def _charges(ws) -> list[dict]:
    return BudgetLedger(ws / "ledger.sqlite").charges()


def test_a_release_prints_no_exact_count_of_persons(demo, capsys):
    ws, _ = demo
    with SqliteConsentStore(ws / "ledger.sqlite") as store:
        import datetime as dt
        eligible = ConsentGate(store).decide("product_improvement", dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                                             job="test").eligible
    capsys.readouterr()
    assert run_cli(*_dp(demo, "--by", "payment_institution", "--count", "--epsilon", "0.5")) == 0
    out = capsys.readouterr().out
    beside = [line for line in out.splitlines() if "count_ci95" not in line and "alipay" not in line
              and not any(name in line for name in ("we_financial", "wechat_pay", "unionpay", "netsunion"))
              and not set(line) <= set("- ")]
    assert beside and not any("persons" in line for line in beside), out
    numbers = {float(n) for line in beside for n in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", line)}
    assert float(eligible) not in numbers, out


@pytest.mark.parametrize(("argv", "message"), [
    (["--count", "--epsilon", "1e-300"], "below the smallest a release may cost"),
    (["--count", "--epsilon", "0.5", "--delta", "0.5"], "above the largest a release may use"),
    (["--sum", "currency:0:10", "--epsilon", "1"], "needs a numeric column"),
    (["--quantile", "payment_institution:0.5:0:10", "--epsilon", "1"], "needs a numeric column"),
    (["--by", "amount", "--keys", "alipay,unionpay", "--count", "--epsilon", "1"], "holds numbers"),
    (["--by", "amount", "--keys", "yes,no", "--count", "--epsilon", "1"], "holds numbers"),
    (["--sum", "amount:0:0.001", "--epsilon", "1"], "resolution"),
    (["--quantile", "amount:1.5:0:10", "--epsilon", "1"], "strictly between 0 and 1"),
    (["--count", "--where", "amount >", "--epsilon", "1"], "does not parse"),
    (["--count", "--where", "amount > amount.mean()", "--epsilon", "1"], "call of amount.mean is not allowed"),
    (["--count", "--where", "price > 3", "--epsilon", "1"], "no column 'price'"),
    (["--by", "currency,category", "--keys", "CNY", "--count", "--epsilon", "1"], "--keys lists the keys of one"),
    (["--count", "--confidence", "1.5", "--epsilon", "1"], "strictly between 0 and 1"),
])
def test_a_refused_release_is_one_line_and_charges_nothing(demo, capsys, argv, message):
    ws, _ = demo
    before = _charges(ws)
    capsys.readouterr()
    assert run_cli(*_dp(demo, *argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("portrait: error:") and message in err[0], err
    assert _charges(ws) == before


def test_where_several_group_columns_and_the_confidence_from_the_command_line(demo, capsys):
    ws, _ = demo
    before = len(_charges(ws))
    capsys.readouterr()
    assert run_cli(*_dp(demo, "--by", "payment_institution,currency", "--where", "amount >= 10", "--count",
                        "--epsilon", "0.5", "--confidence", "0.9", "--max-partitions", "3")) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert "payment_institution" in header and "currency" in header and "count_ci90" in header, out
    assert sum("alipay" in line for line in out.splitlines()) == 9          # 5 institutions x 9 currencies
    charge = _charges(ws)[before]
    assert "where amount >= 10" in charge["query"] and "by payment_institution, currency (45 public keys)" in \
        charge["query"]


# the notebook API: one case per check, each must refuse before the ledger is touched ----------------------

@pytest.fixture
def session(tmp_path):
    rng = np.random.default_rng(1)
    n = 600
    frame = pd.DataFrame({"person_id": [f"p{i}" for i in rng.integers(0, 80, n)],
                          "category": rng.choice(["a", "b", "c"], n), "amount": rng.gamma(2.0, 30.0, n),
                          "units": rng.integers(0, 5, n), "note": rng.choice(["x", "y"], n)})
    ledger = BudgetLedger(tmp_path / "ledger.sqlite")
    ledger.set_budget("orders", epsilon=100.0, delta=1e-5)
    return PrivateSession(pa.Table.from_pandas(frame, preserve_index=False), dataset="orders", ledger=ledger,
                          purpose="test")


def _zcdp(session):
    session.ledger.set_budget("waybills", rho=1.0)
    return PrivateSession(session.data, dataset="waybills", ledger=session.ledger, purpose="test")


CASES = {
    "sum of a text column": lambda s: s.query(epsilon=1).sum("note", bounds=(0, 10)),
    "mean of a text column": lambda s: s.query(epsilon=1).mean("category", bounds=(0, 10)),
    "quantile of a text column": lambda s: s.query(epsilon=1).quantile("note", 0.5, bounds=(0, 10)),
    "histogram of a text column": lambda s: s.query(epsilon=1).histogram("category", edges=[0, 1, 2]).count(),
    "integer keys on a text column": lambda s: s.query(epsilon=1).group_by("category", keys=[1, 2]).count(),
    "text keys on an integer column": lambda s: s.query(epsilon=1).group_by("units", keys=["1", "2"]).count(),
    "bool keys on an integer column": lambda s: s.query(epsilon=1).group_by("units", keys=[True]).count(),
    "missing column": lambda s: s.query(epsilon=1).sum("price", bounds=(0, 10)),
    "bounds inside one resolution step": lambda s: s.query(epsilon=1).sum("amount", bounds=(0, 0.004)),
    "bounds off the resolution": lambda s: s.query(epsilon=1).sum("amount", bounds=(0, 10.005)),
    "bounds that overflow exact sums": lambda s: s.query(epsilon=1).sum("amount", bounds=(0, 1e15)),
    "infinite bounds": lambda s: s.query(epsilon=1).mean("amount", bounds=(0, float("inf"))),
    "NaN bound": lambda s: s.query(epsilon=1).sum("amount", bounds=(float("nan"), 10)),
    "inverted bounds": lambda s: s.query(epsilon=1).quantile("amount", 0.5, bounds=(10, 0)),
    "quantile q of 0": lambda s: s.query(epsilon=1).quantile("amount", 0.0, bounds=(0, 10)),
    "quantile q of 1": lambda s: s.query(epsilon=1).quantile("amount", 1.0, bounds=(0, 10)),
    "one quantile candidate": lambda s: s.query(epsilon=1).quantile("amount", 0.5, bounds=(0, 10), candidates=1),
    "a million quantile candidates": lambda s: s.query(epsilon=1).quantile("amount", 0.5, bounds=(0, 10),
                                                                             candidates=10**6),
    "epsilon 1e-300": lambda s: s.query(epsilon=1e-300).count(),
    "epsilon below the floor": lambda s: s.query(epsilon=9e-4).count(),
    "rho below the floor": lambda s: _zcdp(s).query(rho=1e-9).count(),
    "delta of one half": lambda s: s.query(epsilon=1, delta=0.5, mechanism="gaussian").count(),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_refusal_comes_before_the_charge(session, case):
    before = session.ledger.charges()
    with pytest.raises((PortraitError, PrivacyParameterError)) as refused:
        CASES[case](session).release()
    assert "\n" not in str(refused.value)
    assert session.ledger.charges() == before


def test_valid_queries_on_the_same_columns_still_release(session):
    frame = (session.query(epsilon=1).group_by("units", keys=[0, 1, 2, 3, 4]).bound(max_rows_per_partition=2)
             .count().sum("amount", bounds=(0, 200)).quantile("amount", 0.5, bounds=(0, 200)).release())
    assert list(frame["units"]) == [0, 1, 2, 3, 4]
    assert session.query(epsilon=1e-3).count().release()["count"].notna().all()
    assert len(session.ledger.charges()) == 4
    assert "rows=" not in repr(session)


def test_the_popularity_summary_holds_only_public_figures(demo):
    """Beside the popularity release: the catalogue's size, the epsilon and the budget left, no count of persons."""
    import datetime as dt

    import pyarrow.parquet as pq

    from pipelines.engines import LocalEngine
    from pipelines.engine_jobs import release_item_buyers
    from pipelines.workspace import Workspace
    from profiling.keys import load_master_key

    ws, key_file = demo
    workspace, as_of = Workspace(ws), dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    with SqliteConsentStore(ws / "ledger.sqlite") as store:
        persons = ConsentGate(store).decide("product_improvement", as_of, job="test").person_ids(
            load_master_key(key_file))
    engine = LocalEngine(workspace=workspace)
    try:
        summary = release_item_buyers(engine, workspace, persons, as_of, epsilon=0.1)
    finally:
        engine.close()
    catalogue = pq.read_table(workspace.pseudonymized("catalogue")).num_rows
    assert set(summary) == {"stage", "table", "rows", "epsilon", "engine", "note"}
    assert summary["rows"] == catalogue and summary["epsilon"] == 0.1
    assert summary["note"].startswith("budget left:") and str(len(persons)) not in summary["note"]
