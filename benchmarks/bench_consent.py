"""As-of consent evaluation: 1M accounts with ~10 events each, every purpose, at one moment.

    python benchmarks/bench_consent.py            # 1,000,000 accounts
    python benchmarks/bench_consent.py --small    # 100,000 accounts

The history is made in memory (not timed) as the ledger returns it: ordered by account, then
time, with string columns. Timed, per repeat: grouping the history (``ConsentSnapshot.from_arrow``:
encode accounts, types, purposes and versions as integers, group by (person, slot)), then the
evaluation at one moment of every purpose (plus sensitive data for the purposes that read it,
DND and non-personalized flags). Also timed: grouping the same history in shuffled order (the
general path). Last line: one JSON object; ``seconds`` is the median of grouping + evaluation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time

import numpy as np
import pyarrow as pa

from profiling.consent import ConsentSnapshot
from profiling.purposes import CATALOGUE, CONSENT_EVENT_TYPES, POLICY_HISTORY, POLICY_VERSIONS
from profiling.schema import TIMESTAMP

_YEAR = 365 * 24 * 3600 * 1_000_000
_START = int(dt.datetime(2018, 1, 1, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
_CHANGE = int(POLICY_HISTORY[1].in_force.timestamp() * 1_000_000)
# Event type shares (policy_accept, grant, revoke, sensitive_grant, sensitive_revoke, dnd_on, dnd_off, cancel)
_TYPE_SHARES = {"policy_accept": 0.14, "grant": 0.60, "revoke": 0.10, "sensitive_grant": 0.04,
                "sensitive_revoke": 0.01, "dnd_on": 0.05, "dnd_off": 0.055, "cancel": 0.005}


def make_history(accounts: int, events_per_account: float, seed: int) -> pa.Table:
    """A random consent history in ledger order (account, time); ~``events_per_account`` each."""
    rng = np.random.default_rng(seed)
    per_account = 1 + rng.poisson(events_per_account - 1, accounts)
    person = np.repeat(np.arange(accounts), per_account)
    n = len(person)
    created = _START + (rng.random(accounts) * 8 * _YEAR).astype(np.int64)
    at = created[person] + (rng.exponential(0.5 * _YEAR, n)).astype(np.int64)
    order = np.lexsort((at, person))
    person, at = person[order], at[order]
    names = list(_TYPE_SHARES)
    event_type = rng.choice(len(names), n, p=np.array(list(_TYPE_SHARES.values())) / sum(_TYPE_SHARES.values()))
    purposes = list(CATALOGUE)
    sensitive = [i for i, p in enumerate(purposes) if CATALOGUE[p].needs_sensitive_consent]
    purpose = np.where(np.isin(event_type, [names.index("sensitive_grant"), names.index("sensitive_revoke")]),
                       np.array(sensitive)[rng.integers(0, len(sensitive), n)], rng.integers(0, len(purposes), n))
    needs_purpose = np.isin(event_type, [names.index(t) for t in ("grant", "revoke", "sensitive_grant",
                                                                    "sensitive_revoke")])
    ids = pa.array([f"A{i:010d}" for i in range(accounts)], pa.string())
    return pa.table({
        "account_id": ids.take(pa.array(person)),
        "event_at": pa.array(at, pa.int64()).cast(TIMESTAMP),
        "event_type": pa.array(np.array(names, dtype=object)[event_type], pa.string()),
        "purpose": pa.array(np.array(purposes, dtype=object)[purpose], pa.string(), mask=~needs_purpose),
        "policy_version": pa.array(np.array(POLICY_VERSIONS, dtype=object)[(at >= _CHANGE).astype(int)], pa.string()),
    })


def evaluate_all(snapshot: ConsentSnapshot, moment: dt.datetime) -> dict[str, int]:
    state = snapshot.evaluate(moment)
    counts = {name: int(state.eligible(name).sum()) for name in CATALOGUE}
    for name, entry in CATALOGUE.items():
        if entry.needs_sensitive_consent:
            counts[f"{name}+sensitive"] = int(state.eligible(name, sensitive=True).sum())
    counts["dnd"], counts["non_personalized"] = int(state.dnd.sum()), int(state.non_personalized.sum())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=1_000_000)
    parser.add_argument("--small", action="store_true", help="100,000 accounts")
    parser.add_argument("--events-per-account", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    accounts = 100_000 if args.small else args.accounts
    assert set(_TYPE_SHARES) == set(CONSENT_EVENT_TYPES)

    started = time.perf_counter()
    history = make_history(accounts, args.events_per_account, args.seed)
    shuffled = history.take(pa.array(np.random.default_rng(args.seed + 1).permutation(history.num_rows)))
    print(f"made {history.num_rows:,} events for {accounts:,} accounts in {time.perf_counter() - started:.1f} s",
          file=sys.stderr)
    moment = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    group_s, evaluate_s, total_s, shuffled_s = [], [], [], []
    for attempt in range(args.repeat):
        started = time.perf_counter()
        snapshot = ConsentSnapshot.from_arrow(history)
        grouped = time.perf_counter()
        counts = evaluate_all(snapshot, moment)
        done = time.perf_counter()
        group_s.append(grouped - started)
        evaluate_s.append(done - grouped)
        total_s.append(done - started)
        started = time.perf_counter()
        ConsentSnapshot.from_arrow(shuffled)
        shuffled_s.append(time.perf_counter() - started)
        print(f"repeat {attempt + 1}/{args.repeat}: group {group_s[-1]:.2f} s, evaluate every purpose "
              f"{evaluate_s[-1]:.2f} s, total {total_s[-1]:.2f} s; group shuffled input {shuffled_s[-1]:.2f} s",
              file=sys.stderr)
    median = statistics.median(total_s)
    print(f"{accounts:,} accounts, {history.num_rows:,} events, {len(CATALOGUE)} purposes: "
          f"{median:.2f} s median (group {statistics.median(group_s):.2f} s + evaluate "
          f"{statistics.median(evaluate_s):.2f} s)", file=sys.stderr)
    print(json.dumps({
        "accounts": accounts, "events": history.num_rows, "purposes": len(CATALOGUE), "repeat": args.repeat,
        "seconds": round(median, 3), "group_seconds": round(statistics.median(group_s), 3),
        "evaluate_seconds": round(statistics.median(evaluate_s), 3),
        "group_shuffled_seconds": round(statistics.median(shuffled_s), 3),
        "shuffled_vs_ordered_grouping": round(statistics.median(shuffled_s) / statistics.median(group_s), 2),
        "events_per_second": round(history.num_rows / median), "eligible": counts,
    }))


if __name__ == "__main__":
    main()
