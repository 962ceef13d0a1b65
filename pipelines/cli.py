"""The ``portrait`` command line.

Every command exits 0 on success; on a mistake in the input it prints one line,
``portrait: error: <what was wrong and how to fix it>``, and exits 2 (a damaged ledger file too);
an internal error exits 70. Everything a command writes is owner-only: it runs with umask 077.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from pipelines.commands import budget, consent, dp_query, dsr, export, keys, ledger, recommend
from pipelines.commands._shared import DEFAULT_WORKSPACE, format_stages, format_table
from pipelines.commands._shared import show_progress as _progress
from dp import BudgetLedger, write_review
from pipelines.config import ENGINES, ConfigError, JobConfig, load_config
from pipelines.ingest import ingest
from pipelines.popularity import DATASET as POPULARITY_DATASET
from pipelines.run import parse_as_of, run_pipeline
from pipelines.synthetic import generate
from pipelines.workspace import Workspace
from profiling.errors import InternalError, PortraitError
from profiling.file_modes import restrict_to_owner
from profiling.keys import ENV_VAR, create_key_file, load_master_key

__all__ = ["build_parser", "job_config", "main"]

# Modules whose ``register(commands)`` adds their subcommands, in the order help lists them.
COMMAND_MODULES = (recommend, dp_query, budget, ledger, consent, dsr, export, keys)


def _ingest_rows(reports) -> list[dict]:
    return [{"table": r.table, "rows in": r.rows_in, "accepted": r.accepted, "rejected": r.rejected,
             "reasons": ", ".join(f"{k}={v}" for k, v in r.reasons.items())} for r in reports.values()]


def _cmd_synth(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    counts = generate(args.out, accounts=args.accounts, seed=args.seed, truth_dir=args.truth, progress=_progress(args))
    print(format_table([{"table": name, "rows": rows} for name, rows in counts.items()]))
    print(f"wrote {sum(counts.values())} rows to {args.out} in {time.perf_counter() - started:.1f} s")


def _cmd_ingest(args: argparse.Namespace) -> None:
    key = load_master_key(args.key_file) if args.key_file or os.environ.get(ENV_VAR) else None
    reports = ingest(args.raw, Workspace(args.workspace), key=key, progress=_progress(args))
    print(format_table(_ingest_rows(reports)))
    rejected = sum(r.rejected for r in reports.values())
    if rejected:
        print(f"{rejected} rows rejected: see {Path(args.workspace) / 'rejects'}/<table>/ for each row and reason")


def job_config(args: argparse.Namespace) -> JobConfig:
    """The configuration file's settings (if ``--config``), with the command line's options on top."""
    config = load_config(args.config) if args.config else JobConfig()
    config = config.with_overrides(workspace=Path(args.workspace) if args.workspace else None,
                                   key_file=Path(args.key_file) if args.key_file else None,
                                   as_of=parse_as_of(args.as_of) if args.as_of else None, engine=args.engine)
    if config.as_of is None:
        raise ConfigError("no as-of moment: pass --as-of ISO-TIME or set as_of in the configuration file")
    return config


def _cmd_run(args: argparse.Namespace) -> None:
    config = job_config(args)
    summary = run_pipeline(Workspace(config.workspace), config.key_file, config.as_of, progress=_progress(args),
                           config=config)
    print(format_stages(summary))


def _cmd_demo(args: argparse.Namespace) -> None:
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="portrait-demo-"))
    if root.exists() and any(root.iterdir()):
        raise PortraitError(f"demo folder {root} is not empty; pass --dir with a new folder")
    raw, workspace, key_file = root / "raw", Workspace(root / "workspace"), root / "keys" / "master.key"
    progress = _progress(args)
    started = time.perf_counter()
    key = create_key_file(key_file)
    generate(raw, accounts=args.accounts, seed=args.seed, progress=progress)
    reports = ingest(raw, workspace, key=key, progress=progress)
    ledger = BudgetLedger(workspace.ledger)
    ledger.set_budget(POPULARITY_DATASET, epsilon=1.0, set_by="portrait demo", note="demo budget")
    summary = run_pipeline(workspace, key_file, parse_as_of(args.as_of), progress=progress)
    review = write_review(ledger, root / "privacy-review")
    print(format_table(_ingest_rows(reports)))
    print()
    print(format_stages(summary))
    print(f"\ndemo finished in {time.perf_counter() - started:.1f} s: raw data {raw}, workspace {workspace.root}, "
          f"key {key_file}, privacy review {review['html']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portrait",
        description="Privacy-preserving user portraits: consent-gated, pseudonymized, differentially private.",
        epilog="Start with `portrait demo`: it makes synthetic data, ingests it and runs every stage.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars (they show only on a terminal anyway)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="synthetic data -> workspace -> every stage, with a summary")
    demo.add_argument("--dir", help="new folder for the demo's raw data, workspace and key (default: a temporary folder)")
    demo.add_argument("--accounts", type=int, default=2_000, help="synthetic accounts (default 2000)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--as-of", default="2026-11-01T00:00:00Z", help="evaluation moment, ISO 8601 (default 2026-11-01)")
    demo.set_defaults(handler=_cmd_demo)

    synth = commands.add_parser("synth", help="write a realistic synthetic raw data set (Parquet)")
    synth.add_argument("--out", required=True, help="new folder for the raw tables")
    synth.add_argument("--accounts", type=int, required=True, help="number of accounts (orders are about 10 per account)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same data")
    synth.add_argument("--truth", help="new folder, apart from --out, for the ground truth of which accounts and "
                       "devices belong to one human (for benchmarks; ingest never reads it)")
    synth.set_defaults(handler=_cmd_synth)

    ingest_cmd = commands.add_parser("ingest", help="validate raw Parquet/CSV tables into a workspace")
    ingest_cmd.add_argument("--raw", required=True, help="folder with <table>.parquet, <table>.csv or <table>/ per table")
    ingest_cmd.add_argument("--workspace", default=DEFAULT_WORKSPACE, help=f"workspace folder (default {DEFAULT_WORKSPACE})")
    ingest_cmd.add_argument("--key-file", help="master key file (default: PORTRAIT_MASTER_KEY); needed once persons "
                            "have been erased, so that their rows stay out")
    ingest_cmd.set_defaults(handler=_cmd_ingest)

    run = commands.add_parser(
        "run", help="run every stage on an ingested workspace (the whole pipeline, from a config file or options)",
        description="Run every stage in order: consent ledger, pseudonymization, vault, k-anonymity report, "
                    "identity, portraits, DP popularity, recommendations. Options override the --config file.")
    run.add_argument("--config", help="job configuration file (TOML: workspace, key_file, as_of, engine, purposes, "
                     "[recommendations] k, [portraits], [budget.<dataset>])")
    run.add_argument("--workspace", help=f"workspace folder (default: the config's, else {DEFAULT_WORKSPACE})")
    run.add_argument("--key-file", help="master key file, outside the workspace (`portrait keys init`); "
                     "default: the config's, else the PORTRAIT_MASTER_KEY environment variable")
    run.add_argument("--as-of", help="evaluation moment, ISO 8601; without an offset it is UTC (required unless "
                     "the config sets as_of)")
    run.add_argument("--engine", choices=ENGINES, help="where the partition kernels run (default: the config's, "
                     "else local)")
    run.set_defaults(handler=_cmd_run)

    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def _ledger_of(args: argparse.Namespace) -> Path:
    """The ledger file the command worked on (for an error message): its workspace's, or the config's."""
    workspace = getattr(args, "workspace", None)
    if workspace is None and getattr(args, "config", None):
        try:
            workspace = load_config(args.config).workspace
        except (PortraitError, ValueError, OSError):
            pass
    return Workspace(workspace or DEFAULT_WORKSPACE).ledger


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    previous_umask = restrict_to_owner()
    try:
        args.handler(args)
    except sqlite3.DatabaseError as error:
        if type(error) is sqlite3.OperationalError:  # locked, read-only, disk full: what SQLite says is enough
            print(f"portrait: error: ledger {_ledger_of(args)}: {error}", file=sys.stderr)
        elif type(error) is sqlite3.DatabaseError:
            print(f"portrait: error: ledger {_ledger_of(args)} is not a readable SQLite database ({error}); "
                  f"move it aside and restore it from a backup", file=sys.stderr)
        else:
            raise  # a constraint or programming error: a bug, with its traceback
        return 2
    except InternalError as error:
        print(f"portrait: {error}", file=sys.stderr)
        return 70
    except (PortraitError, ValueError, OSError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"portrait: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("portrait: interrupted; outputs of the unfinished step were not published", file=sys.stderr)
        return 130
    finally:
        os.umask(previous_umask)  # for callers of main() in the same process
    return 0


if __name__ == "__main__":
    sys.exit(main())
