"""The identity graph against the synthetic ground truth: pairwise precision and recall, and its time.

    python benchmarks/bench_identity.py [--accounts 100000] [--seed 7] [--dir DIR]

Generates the raw data set with its ground truth in a separate folder (``portrait synth --truth``;
with ``--dir``, reuses ``DIR/raw`` and ``DIR/raw-truth`` when both are there), ingests it into a new
workspace, runs the ``consent-ledger``, ``pseudonymize`` and ``identity`` stages of ``portrait run``
(ingest and the job never see the truth), then maps the identity outputs' pseudonyms back to raw
ids with the workspace's key, as only this evaluation does, and compares.

Pairs. The persons of the identity output (those eligible for personalization) are the accounts
considered. The graph *claims* a pair for every two accounts in one identity and for every
(account, device) with the device attached to the account's identity. The truth *holds* a pair
for every two of those accounts held by one human, and for every (account, device) where the
device is a personal device of the account's human (household and public devices belong to no
one human). ``precision`` = claimed pairs the truth holds / claimed pairs; ``recall`` = claimed
pairs the truth holds / pairs the truth holds. ``recall_consenting`` counts only true pairs whose
accounts all allow ``cross_device_sync`` (the others may not be linked by policy, whatever the
evidence); ``signed_in_ceiling`` is the share of those whose device saw a sign-in by some account
of the same human at all: no rule reading sign-ins can reach more (devices nobody signed in on
carry no evidence, and account pairs none that tells a second account from a household);
``trusted_ceiling`` the share whose device saw a first and a last sign-in by the human at least
``TRUSTED_AFTER`` (24 hours) apart, what the rule that trusts a device only then can reach. Last
line: one JSON object with ``precision``, ``recall``, the CPU model and the timings in seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from _machine import cpu_model
from _synthetic_job import synthetic_job
from pipelines.workspace import Workspace
from profiling.identity import TRUSTED_AFTER
from profiling.keys import MasterKey
from profiling.pseudonyms import DEVICE, PERSON, pseudonymize

AS_OF = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
STAGES = ("consent-ledger", "pseudonymize", "identity")
PRECISION_TARGET = 0.999


def raw_ids(workspace: Workspace, key: MasterKey, table: str, column: str, domain: str) -> pd.Series:
    """Raw id by pseudonym, for the evaluation only (the job never maps back)."""
    ids = workspace.read(table, [column]).column(column)
    return pd.Series(ids.to_pylist(), index=pseudonymize(ids, key, domain, identifier=column).to_pylist())


def claimed_pairs(workspace: Workspace, key: MasterKey) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(persons with their account and sync flag, claimed account pairs, claimed account-device pairs), raw ids."""
    folder = workspace.outputs("identity")
    persons = ds.dataset(folder / "persons").to_table().to_pandas()
    devices = ds.dataset(folder / "devices").to_table().to_pandas()
    account_of = raw_ids(workspace, key, "accounts", "account_id", PERSON)
    device_of = raw_ids(workspace, key, "devices", "device_id", DEVICE)
    persons["account_id"] = persons["person_id"].map(account_of)
    devices["device_id"] = devices["device_id"].map(device_of)
    if persons["account_id"].isna().any() or devices["device_id"].isna().any():
        raise RuntimeError("an identity output names a pseudonym of no ingested account or device")
    accounts = persons.merge(persons, on="identity_id")
    accounts = accounts[accounts["account_id_x"] < accounts["account_id_y"]]
    account_pairs = accounts.rename(columns={"account_id_x": "a", "account_id_y": "b"})[["a", "b"]]
    device_pairs = persons.merge(devices, on="identity_id")[["account_id", "device_id"]]
    return persons[["account_id", "cross_device_sync"]], account_pairs, device_pairs


def true_pairs(truth: Path, accounts: pd.Series) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(account pairs of one human, (account, personal device of its human) pairs) among ``accounts``."""
    humans = pq.read_table(truth / "accounts").to_pandas()
    humans = humans[humans["account_id"].isin(set(accounts))]
    devices = pq.read_table(truth / "devices").to_pandas()
    personal = devices[devices["use"] == "personal"][["device_id", "human_id"]]
    same = humans.merge(humans, on="human_id")
    same = same[same["account_id_x"] < same["account_id_y"]]
    account_pairs = same.rename(columns={"account_id_x": "a", "account_id_y": "b"})[["a", "b"]]
    device_pairs = humans.merge(personal, on="human_id")[["account_id", "device_id"]]
    return account_pairs, device_pairs


def signed_in_by_human(workspace: Workspace, truth: Path) -> pd.DataFrame:
    """(human_id, device_id, span) for every device an account of the human ever signed in on, with the time from
    their first to their last sign-in there."""
    events = workspace.read("device_events", ["device_id", "account_id", "event_at"])
    events = events.filter(pc.is_valid(events.column("account_id"))).to_pandas()
    humans = pq.read_table(truth / "accounts").to_pandas()
    by_human = events.merge(humans, on="account_id").groupby(["human_id", "device_id"])["event_at"]
    return (by_human.max() - by_human.min()).rename("span").reset_index()


def overlap(left: pd.DataFrame, right: pd.DataFrame) -> int:
    return len(left.merge(right, on=list(left.columns)).drop_duplicates())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--dir", help="keep the data here (reused when already there) instead of a scratch folder")
    args = parser.parse_args()
    scratch = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-identity-"))
    try:
        job = synthetic_job(scratch, accounts=args.accounts, seed=args.seed, as_of=AS_OF, stages=STAGES)
        workspace, truth, key, timings = job.workspace, job.truth, job.key, job.seconds
        accounts_generated = pq.ParquetDataset(job.raw / "accounts").read(columns=["account_id"]).num_rows
        started = time.perf_counter()
        persons, claimed_accounts, claimed_devices = claimed_pairs(workspace, key)
        true_accounts, true_devices = true_pairs(truth, persons["account_id"])
        syncing = set(persons.loc[persons["cross_device_sync"], "account_id"])
        consenting_accounts = true_accounts[true_accounts["a"].isin(syncing) & true_accounts["b"].isin(syncing)]
        consenting_devices = true_devices[true_devices["account_id"].isin(syncing)]
        human_of = pq.read_table(truth / "accounts").to_pandas().set_index("account_id")["human_id"]
        evidenced = consenting_devices.assign(human_id=consenting_devices["account_id"].map(human_of)).merge(
            signed_in_by_human(workspace, truth), on=["human_id", "device_id"])
        trusted = evidenced[evidenced["span"] >= TRUSTED_AFTER]
        right = overlap(claimed_accounts, true_accounts) + overlap(claimed_devices, true_devices)
        claimed = len(claimed_accounts) + len(claimed_devices)
        held = len(true_accounts) + len(true_devices)
        held_consenting = len(consenting_accounts) + len(consenting_devices)
        right_consenting = overlap(claimed_accounts, consenting_accounts) + overlap(claimed_devices, consenting_devices)
        devices_truth = pq.read_table(truth / "devices").to_pandas().set_index("device_id")["use"]
        wrong = claimed_devices.merge(true_devices, how="left", indicator=True)
        wrong_uses = devices_truth.reindex(wrong.loc[wrong["_merge"] == "left_only", "device_id"]).value_counts()
        timings["evaluation"] = round(time.perf_counter() - started, 2)
    finally:
        if not args.dir:
            shutil.rmtree(scratch, ignore_errors=True)

    summary = {
        "accounts": accounts_generated, "seed": args.seed, "persons_evaluated": len(persons),
        "persons_allowing_sync": len(syncing),
        "claimed_pairs": {"accounts": len(claimed_accounts), "account_device": len(claimed_devices)},
        "true_pairs": {"accounts": len(true_accounts), "account_device": len(true_devices)},
        "false_pairs_by_device_use": {str(k): int(v) for k, v in wrong_uses.items()},
        "precision": round(right / claimed, 6) if claimed else 1.0,
        "recall": round(right / held, 6) if held else 1.0,
        "recall_consenting": round(right_consenting / held_consenting, 6) if held_consenting else 1.0,
        "signed_in_ceiling": round(len(evidenced) / held_consenting, 6) if held_consenting else 1.0,
        "trusted_ceiling": round(len(trusted) / held_consenting, 6) if held_consenting else 1.0,
        "precision_target": PRECISION_TARGET,
        "cpu": cpu_model(), "cpus": len(os.sched_getaffinity(0)),
        "seconds": timings,
    }
    print(f"precision {summary['precision']:.4f} (target {PRECISION_TARGET}), recall {summary['recall']:.4f}, "
          f"recall among persons allowing sync {summary['recall_consenting']:.4f} "
          f"(sign-in evidence ceiling {summary['signed_in_ceiling']:.4f}, first to last sign-in "
          f"{TRUSTED_AFTER.total_seconds() / 3600:g} h+ apart {summary['trusted_ceiling']:.4f}); "
          f"identity stage {timings.get('identity')} s")
    print(json.dumps(summary))

if __name__ == "__main__":
    main()
