from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections import Counter

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines import cli
from pipelines.ingest import ingest
from pipelines.run import load_consent_events
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.consent import SqliteConsentStore
from profiling.consent.as_of import ConsentSnapshot, Exclusion
from profiling.errors import PortraitError
from profiling.k_anonymity import DEFAULT_K
from profiling.recipients import RECIPIENTS, Recipient, export_for_recipient, recipient
from profiling.schema import PAYMENT_INSTITUTIONS

AS_OF = "2026-11-01T00:00:00Z"
MOMENT = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipients")
    generate(root / "raw", accounts=300, seed=3, catalogue_items=30, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    load_consent_events(workspace)
    return workspace


@pytest.fixture()
def own_workspace(ingested, tmp_path):
    """A copy of the ingested workspace whose ledger a test may change."""
    shutil.copytree(ingested.root, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def _export(capsys, workspace, out, *extra: str) -> tuple[int, str, str]:
    code = cli.main(["export", "--recipient", "payment_institution", "--out", str(out),
                     "--workspace", str(workspace.root), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _band(amount: float) -> str:
    """Plain reference of the 1-2-5 band."""
    if amount < 0:
        return "<0"
    if amount < 1:
        return "[0, 1)"
    low = 10 ** int(math.floor(math.log10(amount)))
    if low * 10 <= amount:
        low *= 10
    for step, high in ((1, 2), (2, 5), (5, 10)):
        if amount < high * low:
            return f"[{step * low}, {high * low})"
    raise AssertionError(amount)


def _allowed_accounts(workspace, as_of) -> set[str]:
    """Accounts whose payment_settlement holds at ``as_of``, evaluated from the ledger directly."""
    with SqliteConsentStore(workspace.ledger) as store:
        state = ConsentSnapshot.from_arrow(store.events()).evaluate(as_of)
    reasons = state.exclusions("payment_settlement")
    return {a for a, r in zip(state.account_ids.to_pylist(), reasons) if r == Exclusion.ELIGIBLE}


def _expected(workspace, institution, as_of) -> tuple[list[tuple[str, float]], int, int]:
    """(order_id, amount) rows the export must hold, rows suppressed, classes suppressed."""
    allowed = _allowed_accounts(workspace, as_of)
    orders = [o for o in workspace.read("orders").to_pylist()
              if o["payment_institution"] == institution and o["account_id"] in allowed]
    sizes = Counter(_band(o["amount"]) for o in orders)
    kept = [(o["order_id"], o["amount"]) for o in orders if sizes[_band(o["amount"])] >= DEFAULT_K]
    return kept, len(orders) - len(kept), sum(1 for size in sizes.values() if size < DEFAULT_K)


def test_export_is_k_anonymous_over_the_amount_band_and_reports_it(ingested, tmp_path, capsys):
    out = tmp_path / "out"
    code, printed, _ = _export(capsys, ingested, out, "--institution", "alipay", "--as-of", AS_OF)
    assert code == 0
    expected, suppressed, classes = _expected(ingested, "alipay", MOMENT)
    assert suppressed > 0 and classes > 0  # the synthetic amounts have rare bands: the check has teeth
    table = pacsv.read_csv(out / "payment_institution-alipay.csv")
    assert table.column_names == ["order_id", "amount"]
    assert sorted(zip(table["order_id"].to_pylist(), table["amount"].to_pylist())) == sorted(expected)
    assert all(size >= DEFAULT_K for size in Counter(_band(a) for a in table["amount"].to_pylist()).values())
    report = json.loads((out / "payment_institution-alipay.report.json").read_text())
    anonymity = report["k_anonymity"]
    assert anonymity["quasi_identifiers"] == ["amount"] and list(anonymity["generalized"]) == ["amount"]
    assert (anonymity["k"], anonymity["rows_suppressed"], anonymity["classes_suppressed"]) == (
        DEFAULT_K, suppressed, classes)
    assert report["rows"] == len(expected) and report["consent"]["purpose"] == "payment_settlement"
    assert f"wrote {len(expected)} rows (order_id, amount) for payment_institution" in printed
    assert f"k-anonymity k={DEFAULT_K} over amount (banded): suppressed {suppressed} rows in {classes} classes" \
        in printed
    assert sorted(p.name for p in out.iterdir()) == ["payment_institution-alipay.csv",
                                                      "payment_institution-alipay.report.json"]


def test_export_requires_the_institution(ingested, tmp_path, capsys):
    code, _, error = _export(capsys, ingested, tmp_path / "out")
    assert code == 2
    assert error == ("portrait: error: recipient 'payment_institution' receives only its own rows: name the "
                     f"payment_institution with --institution, one of {', '.join(PAYMENT_INSTITUTIONS)}\n")
    assert not (tmp_path / "out").exists()
    with pytest.raises(PortraitError, match="name the payment_institution with --institution"):
        export_for_recipient(ingested, "payment_institution", tmp_path / "out")


def test_cancelled_accounts_and_revoked_payment_settlement_are_left_out(own_workspace, tmp_path, capsys):
    allowed = _allowed_accounts(own_workspace, MOMENT)
    payers = sorted({o["account_id"] for o in own_workspace.read("orders").to_pylist()
                     if o["payment_institution"] == "alipay" and o["account_id"] in allowed})
    cancelled, revoked = payers[0], payers[1]

    def order_ids(account):
        return {o["order_id"] for o in own_workspace.read("orders").to_pylist()
                if o["account_id"] == account and o["payment_institution"] == "alipay"}

    later = "2026-11-03T00:00:00Z"
    assert cli.main(["consent", "cancel", "--account", cancelled, "--at", "2026-11-02T00:00:00Z",
                     "--workspace", str(own_workspace.root)]) == 0
    assert cli.main(["consent", "revoke", "--account", revoked, "--purpose", "payment_settlement",
                     "--at", "2026-11-02T00:00:00Z", "--workspace", str(own_workspace.root)]) == 0
    capsys.readouterr()
    code, printed, _ = _export(capsys, own_workspace, tmp_path / "after", "--institution", "alipay",
                               "--as-of", later, "--format", "parquet")
    assert code == 0
    exported = set(pq.read_table(tmp_path / "after" / "payment_institution-alipay.parquet")["order_id"].to_pylist())
    assert not exported & (order_ids(cancelled) | order_ids(revoked))
    expected, _, _ = _expected(own_workspace, "alipay", dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc))
    assert exported == {order_id for order_id, _ in expected}
    report = json.loads((tmp_path / "after" / "payment_institution-alipay.report.json").read_text())
    reasons = report["consent"]["persons_left_out_by_reason"]
    population = {o["account_id"] for o in own_workspace.read("orders").to_pylist()
                  if o["payment_institution"] == "alipay"}
    refused = population - _allowed_accounts(own_workspace, dt.datetime(2026, 11, 3, tzinfo=dt.timezone.utc))
    assert sum(reasons.values()) == len(refused) and reasons["cancelled"] >= 1 and reasons["revoked"] >= 1
    assert report["consent"]["rows_left_out"] >= len(order_ids(cancelled) | order_ids(revoked))
    assert "cancelled=" in printed and "revoked=" in printed
    # Before the events, as of the earlier moment, the same persons' orders are still settled.
    _export(capsys, own_workspace, tmp_path / "before", "--institution", "alipay", "--as-of", AS_OF)
    before = set(pacsv.read_csv(tmp_path / "before" / "payment_institution-alipay.csv")["order_id"].to_pylist())
    expected_before, _, _ = _expected(own_workspace, "alipay", MOMENT)
    assert before == {order_id for order_id, _ in expected_before}


def test_institution_filter_is_not_exported(ingested, tmp_path):
    result = export_for_recipient(ingested, "payment_institution", tmp_path, institution="wechat_pay",
                                  file_format="parquet", as_of=MOMENT)
    table = pq.read_table(result.path)
    assert result.path.name == "payment_institution-wechat_pay.parquet"
    assert table.column_names == ["order_id", "amount"]
    assert sorted(zip(table["order_id"].to_pylist(), table["amount"].to_pylist())) == sorted(
        _expected(ingested, "wechat_pay", MOMENT)[0])
    narrowed = export_for_recipient(ingested, "payment_institution", tmp_path / "n", fields=["order_id"],
                                    institution="wechat_pay", as_of=MOMENT)
    assert pacsv.read_csv(narrowed.path).column_names == ["order_id"]
    # without the amount there is no quasi-identifier left: one class, nothing suppressed
    assert narrowed.k_anonymity.quasi_identifiers == () and narrowed.k_anonymity.rows_suppressed == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"fields": ["order_id", "account_id"]}, "may receive only order_id, amount; refused: account_id; nothing written"),
    ({"fields": []}, "refused: an empty field list"),
    ({"institution": "paypal"}, "unknown payment_institution 'paypal'; known: we_financial, alipay"),
    ({"file_format": "xlsx"}, "unknown export format 'xlsx'"),
    ({"as_of": dt.datetime(2026, 11, 1)}, "must be a timezone-aware moment"),
])
def test_refused_requests_write_nothing(ingested, tmp_path, kwargs, message):
    kwargs = {"institution": "alipay", **kwargs}
    with pytest.raises(PortraitError, match=message):
        export_for_recipient(ingested, "payment_institution", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_workspace_without_a_ledger_is_refused(ingested, tmp_path):
    shutil.copytree(ingested.root / "ingested", tmp_path / "ws" / "ingested")
    with pytest.raises(PortraitError, match="has no consent ledger .*portrait consent load"):
        export_for_recipient(Workspace(tmp_path / "ws"), "payment_institution", tmp_path / "out",
                             institution="alipay")
    assert not (tmp_path / "out").exists()


def test_unknown_recipient_names_the_known_ones(ingested, tmp_path):
    with pytest.raises(PortraitError, match="unknown recipient 'advertiser'; the declared recipients are "
                                            "payment_institution"):
        recipient("advertiser")
    with pytest.raises(PortraitError, match="unknown recipient"):
        export_for_recipient(ingested, "advertiser", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown: phone"):
        Recipient("x", "orders", ("order_id", "phone"), "test", "payment_settlement", ())
    with pytest.raises(ValueError, match="quasi-identifiers must be among its fields order_id"):
        Recipient("x", "orders", ("order_id",), "test", "payment_settlement", ("amount",))
    with pytest.raises(ValueError, match="unknown purpose 'payment'"):
        Recipient("x", "orders", ("order_id",), "test", "payment", ())
    assert RECIPIENTS["payment_institution"].fields == ("order_id", "amount")
    # An overseas receiver never goes out through the mainland path (no separate consent, no transfer log there).
    with pytest.raises(PortraitError, match="'hk_customs_broker' is an overseas receiver"):
        export_for_recipient(ingested, "hk_customs_broker", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_command_line_refusals(ingested, tmp_path, capsys):
    refused = tmp_path / "refused"
    code, _, error = _export(capsys, ingested, refused, "--institution", "alipay", "--fields", "order_id,currency")
    assert code == 2 and "refused: currency; nothing written" in error
    assert cli.main(["export", "--recipient", "marketing", "--out", str(refused),
                     "--workspace", str(ingested.root)]) == 2
    assert "declared recipients are payment_institution" in capsys.readouterr().err
    code, _, error = _export(capsys, ingested, refused, "--institution", "alipay", "--as-of", "yesterday")
    assert code == 2 and "--as-of 'yesterday' is not an ISO 8601 time" in error
    assert not refused.exists()
