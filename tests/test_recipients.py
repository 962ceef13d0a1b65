from __future__ import annotations

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines import cli
from pipelines.ingest import ingest
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.errors import PortraitError
from profiling.recipients import RECIPIENTS, Recipient, export_for_recipient, recipient


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipients")
    generate(root / "raw", accounts=60, seed=3, catalogue_items=30, progress=False)
    workspace = Workspace(root / "ws")
    ingest(root / "raw", workspace, progress=False)
    return workspace


@pytest.fixture()
def portrait():
    return cli.main


def test_payment_institutions_get_exactly_order_number_and_amount(ingested, tmp_path):
    assert RECIPIENTS["payment_institution"].fields == ("order_id", "amount")
    result = export_for_recipient(ingested, "payment_institution", tmp_path / "out")
    table = pacsv.read_csv(result.path)
    assert table.column_names == ["order_id", "amount"]
    orders = ingested.read("orders", ["order_id", "amount"])
    assert sorted(table["order_id"].to_pylist()) == sorted(orders["order_id"].to_pylist())
    assert result.rows == orders.num_rows
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["payment_institution.csv"]


def test_institution_filter_is_not_exported(ingested, tmp_path):
    result = export_for_recipient(ingested, "payment_institution", tmp_path, institution="alipay",
                                  file_format="parquet")
    table = pq.read_table(result.path)
    assert result.path.name == "payment_institution-alipay.parquet"
    assert table.column_names == ["order_id", "amount"]
    orders = ingested.read("orders", ["order_id", "payment_institution"]).to_pylist()
    assert sorted(table["order_id"].to_pylist()) == sorted(
        o["order_id"] for o in orders if o["payment_institution"] == "alipay")
    narrowed = export_for_recipient(ingested, "payment_institution", tmp_path / "n", fields=["order_id"])
    assert pacsv.read_csv(narrowed.path).column_names == ["order_id"]


@pytest.mark.parametrize("kwargs, message", [
    ({"fields": ["order_id", "account_id"]}, "may receive only order_id, amount; refused: account_id; nothing written"),
    ({"fields": []}, "refused: an empty field list"),
    ({"institution": "paypal"}, "unknown payment_institution 'paypal'; known: we_financial, alipay"),
    ({"file_format": "xlsx"}, "unknown export format 'xlsx'"),
])
def test_refused_requests_write_nothing(ingested, tmp_path, kwargs, message):
    with pytest.raises(PortraitError, match=message):
        export_for_recipient(ingested, "payment_institution", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_unknown_recipient_names_the_known_ones(ingested, tmp_path):
    with pytest.raises(PortraitError, match="unknown recipient 'advertiser'; the declared recipients are "
                                            "payment_institution"):
        recipient("advertiser")
    with pytest.raises(PortraitError, match="unknown recipient"):
        export_for_recipient(ingested, "advertiser", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="unknown: phone"):
        Recipient("x", "orders", ("order_id", "phone"), "test")


def test_command_line(ingested, tmp_path, portrait, capsys):
    out = tmp_path / "out"
    assert portrait(["export", "--recipient", "payment_institution", "--out", str(out),
                     "--workspace", str(ingested.root), "--institution", "wechat_pay"]) == 0
    assert "(order_id, amount) for payment_institution" in capsys.readouterr().out
    assert pacsv.read_csv(out / "payment_institution-wechat_pay.csv").column_names == ["order_id", "amount"]

    refused = tmp_path / "refused"
    assert portrait(["export", "--recipient", "payment_institution", "--out", str(refused),
                     "--workspace", str(ingested.root), "--fields", "order_id,currency"]) == 2
    assert "refused: currency; nothing written" in capsys.readouterr().err
    assert portrait(["export", "--recipient", "marketing", "--out", str(refused),
                     "--workspace", str(ingested.root)]) == 2
    assert "declared recipients are payment_institution" in capsys.readouterr().err
    assert not refused.exists()
