"""The main job: every stage, in order, on an ingested workspace.

A stage is a named function of a ``RunContext`` returning summary rows (dicts) for the printed
table. Stages run in the order of ``STAGES``; each writes its outputs atomically, so a failed
stage leaves the previous run's outputs in place. The order is the privacy order:

1. ``verify-ingested``: the identifiable zone matches the data model and the ingest report;
2. ``consent-ledger``: ingested consent events are appended to ``WS/ledger.sqlite`` (idempotent);
   then ``retention`` (``pipelines.retention``): accounts cancelled at least the grace period before
   ``--as-of`` are erased, and rows past their table's retention period deleted, before anything
   derived is built from them;
3. ``pseudonymize``: the door writes the analytics zone ``WS/pseudonymized/`` (no direct identifier
   passes, sensitive columns never);
4. ``seal``: ID-card numbers for customs move into the AES-GCM vault ``WS/vault/`` (the ingested
   waybills keep a null in their place), readable only through
   ``profiling.vault.customs_id_numbers`` with the separate sensitive-data consent;
5. ``k-anonymity``: class sizes of the person-level analytics table, to ``WS/k-anonymity-report.json``;
6. ``identity``: each person eligible for ``personalization`` with the devices no other account ever
   signed in on, for those who also allow ``cross_device_sync``; accounts are never linked
   (``WS/outputs/identity/``, ``WS/identity-report.json``);
7. ``portraits``: one feature row per identity of those persons (``WS/outputs/portraits/``);
8. ``popularity``: buyers per item, epsilon-DP per person, charged to the ``orders`` budget (skipped,
   keeping the last release, when no budget is set or too little is left);
9. ``recommendations``: the consent gate answers for ``service_provision`` and ``marketing_messages``
   as of ``--as-of`` (both audited); everyone who may be served gets a list, personalized only for
   those allowing personalization, whose analytics-zone rows alone are scored; the non-personalized
   lists rank items by the DP popularity release when there is one, else by the catalogue's listing
   date (the output's schema metadata and the summary say which); the marketing
   audience is written as MARKETING pseudonyms, which do not join with the analytics zone;
10. ``risk``: account-risk scores of the last 13 weeks' person-weeks for ``transaction_safety``
    (``pipelines.risk``), readable by that purpose alone;
11. ``stale-marks``: marks that data-subject corrections left are cleared, the outputs being rebuilt.

Each stage declares its purpose and the folders it reads (``Stage.purpose``, ``Stage.reads``);
``check_stage_inputs`` refuses the job before any stage runs when a stage declares an output its
purpose may not read, and ``RunContext.output`` is how a stage opens an output.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from dp import BudgetLedger
from dp.budget import DEFAULT_PERIOD
from pipelines.config import JobConfig
from pipelines.door import pseudonymize_workspace
from pipelines.dsr import clear_stale, stale_persons
from pipelines.engines import Engine, get_engine
from pipelines.engine_jobs import release_item_buyers
from pipelines.popularity import popularity_release_id, read_popularity
from pipelines.portraits import write_identity, write_portraits
from pipelines.recommend import write_recommendations
from pipelines.risk import INPUTS as RISK_INPUTS
from pipelines.risk import PURPOSE as RISK_PURPOSE
from pipelines.risk import write_risk
from pipelines.retention import enforce_retention
from pipelines.workspace import Workspace, holding_job_lock, write_json_atomic
from profiling._memory import release_freed_memory
from profiling.consent import (
    ConsentGate,
    ConsentSnapshot,
    GateDecision,
    LoadReport,
    SqliteConsentStore,
)
from profiling.errors import KeyFileError, WorkspaceError
from profiling.k_anonymity import (
    DEFAULT_K,
    default_quasi_identifiers,
    enforce_k_anonymity,
)
from profiling.keys import MasterKey, load_master_key
from profiling.pseudonyms import MARKETING, pseudonymize
from profiling.purposes import OutputAccessError, check_output_read
from profiling.schema import TABLE_NAMES, arrow_schema
from profiling.vault import seal_id_numbers

__all__ = ["STAGES", "RunContext", "Stage", "apply_budgets", "check_stage_inputs", "load_consent_events",
           "parse_as_of", "run_pipeline"]


@dataclass(frozen=True)
class RunContext:
    workspace: Workspace
    key: MasterKey
    as_of: dt.datetime  # UTC; the moment consent and features are evaluated at
    progress: bool = True
    config: JobConfig = field(default_factory=JobConfig)
    engine: Engine | None = None  # where partition kernels run; run_pipeline opens it from the config
    _snapshot: list[ConsentSnapshot] = field(default_factory=list, repr=False, compare=False)
    _stage: list[Stage] = field(default_factory=list, repr=False, compare=False)  # the one running

    def output(self, name: str) -> Path:
        """``WS/outputs/<name>`` for the running stage: it must declare it among its inputs, and its
        purpose must be allowed to read it (``Workspace.output``); otherwise ``OutputAccessError``."""
        stage = self._stage[0] if self._stage else None
        if stage is None or f"outputs/{name}" not in stage.reads:
            raise OutputAccessError(f"stage {stage.name if stage else '(none)'!r} reads outputs/{name} without "
                                    "declaring it among its inputs (Stage.reads in pipelines/run.py)")
        return self.workspace.output(name, purpose=stage.purpose or "(no purpose)")

    def decide(self, purpose: str, *, job: str, population=None) -> GateDecision:
        """The consent gate's audited answer for ``purpose`` at ``as_of``; the ledger is read once per run."""
        with SqliteConsentStore(self.workspace.ledger) as store:
            gate = ConsentGate(store)
            if not self._snapshot:
                self._snapshot.append(gate.snapshot())
            return gate.decide(purpose, self.as_of, job=job, population=population, snapshot=self._snapshot[0])


@dataclass(frozen=True)
class Stage:
    """A step of the job: ``purpose`` is the catalogue purpose it serves, ``reads`` the workspace
    folders it reads (``pseudonymized/<table>``, ``outputs/<name>`` ...). Before any stage runs,
    every ``outputs/<name>`` it declares must be one its purpose may read (``check_stage_inputs``)."""

    name: str
    description: str
    run: Callable[[RunContext], list[dict]]
    purpose: str | None = None
    reads: tuple[str, ...] = ()


def check_stage_inputs(stages: Sequence[Stage]) -> None:
    """Raise ``OutputAccessError`` naming the stage, its purpose and the output, for the first stage
    declaring an output its purpose may not read (or an output read without a purpose)."""
    for stage in stages:
        for folder in stage.reads:
            zone, _, name = folder.partition("/")
            if zone != "outputs":
                continue
            if stage.purpose is None:
                raise OutputAccessError(f"stage {stage.name!r} reads {folder} but declares no purpose")
            try:
                check_output_read(stage.purpose, name)
            except OutputAccessError as error:
                raise OutputAccessError(f"stage {stage.name!r}: {error}") from None


def parse_as_of(text: str) -> dt.datetime:
    """Parse an ISO 8601 moment; one without a UTC offset is taken as UTC."""
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--as-of {text!r} is not an ISO 8601 time such as 2026-11-01T00:00:00Z") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC)


def _verify_ingested(context: RunContext) -> list[dict]:
    """Every ingested table has the model's schema and as many rows as ingest accepted."""
    workspace = context.workspace
    workspace.require_ingested()
    if not workspace.ingest_report.is_file():
        raise WorkspaceError(f"{workspace.ingest_report} is missing; rerun `portrait ingest`")
    report = json.loads(workspace.ingest_report.read_text(encoding="utf-8"))["tables"]
    rows = []
    for name in TABLE_NAMES:
        files = sorted(workspace.verified(workspace.ingested(name)).glob("*.parquet"))
        count = 0
        for path in files:
            metadata = pq.read_metadata(path)
            if not metadata.schema.to_arrow_schema().equals(arrow_schema(name)):
                raise WorkspaceError(f"{path} does not have the {name} schema of this version; rerun `portrait ingest`")
            count += metadata.num_rows
        if count != report[name]["accepted"]:
            raise WorkspaceError(f"{workspace.ingested(name)} holds {count} rows but ingest accepted "
                                 f"{report[name]['accepted']}; rerun `portrait ingest`")
        rows.append({"stage": "verify-ingested", "table": name, "rows": count,
                     "rejected": report[name]["rejected"]})
    return rows


def load_consent_events(workspace: Workspace) -> LoadReport:
    """Append the ingested consent events to the ledger; events already there (same id) are skipped.

    Files already loaded whole (same content, nothing erased since) are not read again.
    """
    workspace.require_ingested()
    files = sorted(workspace.verified(workspace.ingested("consent_events")).glob("*.parquet"))
    fingerprint = _fingerprint(files)
    with SqliteConsentStore(workspace.ledger) as store:
        if store.has_loaded(fingerprint):
            offered = sum(pq.read_metadata(path).num_rows for path in files)
            return LoadReport(offered=offered, recorded=0, already_present=offered)
        return store.append_table(workspace.dataset("consent_events"), source="ingest", fingerprint=fingerprint)


def _fingerprint(files: Sequence[Path]) -> str:
    """SHA-256 over the files' names and contents."""
    digest = hashlib.sha256(b"portrait consent events v1\x00")
    for path in files:
        digest.update(path.name.encode() + b"\x00" + path.stat().st_size.to_bytes(8, "little"))
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _consent_ledger(context: RunContext) -> list[dict]:
    report = load_consent_events(context.workspace)
    return [{"stage": "consent-ledger", "table": "consent_events", "rows": report.recorded,
             "already_present": report.already_present}]


def _retention(context: RunContext) -> list[dict]:
    return enforce_retention(context.workspace, context.key, context.as_of,
                             grace_days=context.config.cancellation_grace_days)


def _pseudonymize(context: RunContext) -> list[dict]:
    summary = pseudonymize_workspace(context.workspace, context.key, as_of=context.as_of.date(),
                                     progress=context.progress, engine=context.engine)
    return [{"stage": "pseudonymize", "table": table, "rows": facts["rows"], "key_version": summary["key_version"],
             "dropped": len(facts["dropped"])} for table, facts in summary["tables"].items()]


def _seal(context: RunContext) -> list[dict]:
    sealed = seal_id_numbers(context.workspace, context.key, progress=context.progress)
    return [{"stage": "seal", "table": "waybill_id_numbers", "rows": sealed}]


def _k_anonymity(context: RunContext) -> list[dict]:
    """Class sizes of the person-level analytics table over its quasi-identifiers (report only).

    The analytics zone does not leave the engine; this shows what releasing its person-level
    attributes would face, and is written to ``WS/k-anonymity-report.json``.
    """
    workspace = context.workspace
    dataset = ds.dataset(workspace.verified(workspace.pseudonymized("accounts")), format="parquet")
    quasi_identifiers = default_quasi_identifiers(dataset.schema.names)
    result = enforce_k_anonymity(dataset.to_table(columns=quasi_identifiers), quasi_identifiers, k=DEFAULT_K)
    report = {"table": "pseudonymized/accounts", **result.report(), "rows_in_classes_below_k": result.rows_suppressed}
    write_json_atomic(workspace.root / "k-anonymity-report.json", report)
    return [{"stage": "k-anonymity", "table": "accounts", "quasi_identifiers": "+".join(result.quasi_identifiers),
             "rows": report["rows"], "classes": result.classes, "smallest_class": result.smallest_class,
             f"rows_below_k{result.k}": result.rows_suppressed}]


def _population(context: RunContext) -> pa.ChunkedArray:
    return context.workspace.read("accounts", ["account_id"]).column("account_id")


def _eligible(context: RunContext, job: str) -> pa.Table:
    """``(person_id, dnd, non_personalized)`` of the persons whose personalization consent holds."""
    decision = context.decide("personalization", job=job, population=_population(context))
    return pa.table({"person_id": decision.person_ids(context.key), "dnd": decision.dnd,
                     "non_personalized": decision.non_personalized})


def _identity(context: RunContext) -> list[dict]:
    linking = pa.array([], pa.string())
    if context.config.allows("cross_device_sync"):
        syncing = context.decide("cross_device_sync", job="identity", population=_population(context))
        linking = syncing.person_ids(context.key)
    report = write_identity(context.workspace, _eligible(context, "identity"), linking, engine=context.engine)
    return [{"stage": "identity", "table": "identity", "rows": report["persons"], "identities": report["identities"],
             "linked_devices": report["linked_devices"], "shared_devices": report["shared_devices"],
             "most_devices": report["largest_identity"]["devices"]}]


def _portraits(context: RunContext) -> list[dict]:
    context.output("identity")  # the identity stage's output, through the purpose check
    return [write_portraits(context.workspace, _eligible(context, "portraits"), as_of=context.as_of,
                            progress=context.progress, rows_per_partition=context.config.rows_per_partition,
                            engine=context.engine)]


def _popularity(context: RunContext) -> list[dict]:
    if not context.config.allows("product_improvement"):
        return [{"stage": "popularity", "table": "popularity", "rows": 0,
                 "note": "skipped: product_improvement is not among the job's purposes"}]
    decision = context.decide("product_improvement", job="popularity")
    return [release_item_buyers(context.engine, context.workspace, decision.person_ids(context.key), context.as_of)]


def _recommendations(context: RunContext) -> list[dict]:
    workspace = context.workspace
    population = _population(context)
    # Everyone who may be served gets a list; non_personalized marks those who refused personalization.
    served = context.decide("service_provision", job="recommendations", population=population)
    decisions = [served]
    audience = None  # without the purpose the audience is written empty, never left from an earlier run
    if context.config.allows("marketing_messages"):
        marketing = context.decide("marketing_messages", job="marketing_audience", population=population)
        audience = marketing.person_frame(context.key)
        audience["marketing_id"] = pseudonymize(marketing.account_ids, context.key, MARKETING,
                                                identifier="account_id").to_pandas()
        decisions.append(marketing)
    if workspace.outputs("popularity").is_dir():
        context.output("popularity")  # through the purpose check before read_popularity opens it
    popularity = read_popularity(workspace)
    rows = write_recommendations(workspace, served.person_frame(context.key), as_of=context.as_of,
                                 k=context.config.k, marketing=audience, popularity=popularity,
                                 popularity_release=popularity_release_id(workspace) if popularity is not None
                                 else None, engine=context.engine, progress=context.progress)
    for decision in decisions:
        rows.append({"stage": "consent-gate", "table": decision.purpose, "rows": decision.eligible,
                     "excluded": sum(decision.excluded.values())})
    return rows


def _risk(context: RunContext) -> list[dict]:
    """Transaction safety: needs no grant, so it answers for everyone whose accepted policy holds."""
    decision = context.decide(RISK_PURPOSE, job="risk", population=_population(context))
    return [write_risk(context.workspace, decision.person_ids(context.key), as_of=context.as_of,
                       engine=context.engine)]


def _clear_stale(context: RunContext) -> list[dict]:
    """Every derived output was rewritten above, so corrections made before this run are reflected."""
    marks = stale_persons(context.workspace)
    cleared = clear_stale(context.workspace, [mark["person_id"] for mark in marks])
    return [{"stage": "stale-marks", "table": "dsr_stale", "rows": cleared}]


STAGES: list[Stage] = [
    Stage("verify-ingested", "check the ingested tables against the data model and the ingest report",
          _verify_ingested, reads=("ingested",)),
    Stage("consent-ledger", "append the ingested consent events to the consent ledger", _consent_ledger,
          reads=("ingested/consent_events",)),
    Stage("retention", "erase accounts cancelled longer ago than the grace period; delete rows past their "
          "table's retention period", _retention),
    Stage("pseudonymize", "write the analytics zone: pseudonyms and generalized values only", _pseudonymize,
          reads=("ingested",)),
    Stage("seal", "move ID-card numbers for customs into the AES-GCM vault", _seal, purpose="service_provision",
          reads=("ingested/waybills",)),
    Stage("k-anonymity", "report the class sizes of the person-level analytics table", _k_anonymity,
          reads=("pseudonymized/accounts",)),
    Stage("identity", "give each eligible person allowing cross-device sync the devices only they signed in on",
          _identity, purpose="personalization", reads=("pseudonymized/device_events",)),
    Stage("portraits", "compute the portrait features of every person eligible for personalization", _portraits,
          purpose="personalization", reads=("outputs/identity", "pseudonymized/orders", "pseudonymized/waybills",
                                            "pseudonymized/device_events", "pseudonymized/devices")),
    Stage("popularity", "release buyers per item with differential privacy, charged to the orders budget",
          _popularity, purpose="product_improvement", reads=("pseudonymized/orders", "pseudonymized/catalogue")),
    Stage("recommendations", "gate by consent, fit factors, score every eligible person, write the lists "
          "and the marketing audience", _recommendations, purpose="personalization",
          reads=("outputs/popularity", "pseudonymized/orders", "pseudonymized/catalogue", "pseudonymized/accounts")),
    Stage("risk", "score recent person-weeks for account risk (transaction safety only; walled off from "
          "personalization, marketing and DP releases)", _risk, purpose=RISK_PURPOSE,
          reads=tuple(f"pseudonymized/{table}" for table in RISK_INPUTS)),
    Stage("stale-marks", "clear the marks corrections left: every derived output is now recomputed", _clear_stale),
]


def apply_budgets(workspace: Workspace, config: JobConfig) -> list[dict]:
    """Set each budget of the configuration that differs from the one in force (recorded as set by the file)."""
    ledger = BudgetLedger(workspace.ledger)
    in_force = {(b.dataset, b.period): b for b in ledger.budgets()}
    rows = []
    for dataset, wanted in config.budgets.items():
        epsilon, delta = float(wanted["epsilon"]), float(wanted.get("delta", 0.0))
        current = in_force.get((dataset, DEFAULT_PERIOD))
        if current is not None and (current.epsilon, current.delta) == (epsilon, delta):
            continue
        ledger.set_budget(dataset, epsilon=epsilon, delta=delta, set_by=f"config {config.source}",
                          note="from the job configuration")
        rows.append({"stage": "budget", "table": dataset, "rows": 1, "epsilon": epsilon, "delta": delta})
    return rows


@holding_job_lock("portrait run")
def run_pipeline(workspace: Workspace, key_file: str | Path | None, as_of: dt.datetime, *,
                 progress: bool = True, config: JobConfig | None = None,
                 stages: Sequence[str] | None = None,
                 on_stage: Callable[[str, float], None] | None = None, engine: Engine | None = None) -> list[dict]:
    """Run every stage in ``STAGES`` and return their summary rows.

    The master key comes from ``key_file``, or from ``PORTRAIT_MASTER_KEY`` when it is None. A key
    file must lie outside the workspace: outputs are shared more widely than keys. ``config`` gives
    the purposes, K, identity and partition settings and budgets (``JobConfig()`` by default).
    ``stages`` runs only the named stages, in ``STAGES`` order (each reads what earlier runs wrote).
    ``on_stage(name, seconds)`` is called after each stage with its wall-clock time.
    ``engine``: an engine the caller owns (e.g. on its own Spark session), used instead of the one
    the configuration names and left open at the end; without it the run opens that one and closes
    it (stopping a Spark session it started).
    The whole run holds the workspace's job lock (``Workspace.job_lock``): an erasure, correction or
    consent change asked for meanwhile waits for the run to end, so the run never republishes it.
    """
    config = config or JobConfig()
    names = [stage.name for stage in STAGES]
    unknown = sorted(set(stages or ()) - set(names))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(names)}")
    chosen = [stage for stage in STAGES if stages is None or stage.name in stages]
    check_stage_inputs(chosen)
    if key_file is not None:
        key_path = Path(key_file).resolve()
        if workspace.root.resolve() in key_path.parents:
            raise KeyFileError(f"key file {key_file} lies inside the workspace {workspace.root}; "
                               "keep keys apart from data")
        key_file = key_path
    key = load_master_key(key_file)
    with SqliteConsentStore(workspace.ledger) as store:
        store.require_intact()   # no stage runs on a consent history edited outside Portrait
    summary: list[dict] = apply_budgets(workspace, config)
    with contextlib.ExitStack() as stack:
        if engine is None:
            options = config.engine_options() if config.engine == "spark" else {"workspace": workspace,
                                                                                 "progress": progress}
            engine = stack.enter_context(get_engine(config.engine, **options))
        context = RunContext(workspace=workspace, key=key, as_of=as_of, progress=progress, config=config,
                             engine=engine)
        for stage in tqdm(chosen, desc="run", unit=" stage", disable=not progress):
            started = time.perf_counter()
            context._stage[:] = [stage]
            summary.extend(stage.run(context))
            release_freed_memory()   # what the stage freed: the next one starts from what the run holds
            if on_stage is not None:
                on_stage(stage.name, time.perf_counter() - started)
    return summary
