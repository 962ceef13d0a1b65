"""``portrait recommend``: refresh the recommendation lists on the current analytics zone, or show one person's."""

from __future__ import annotations

import argparse

import pyarrow.compute as pc
import pyarrow.dataset as ds

from pipelines.commands._shared import existing_workspace, format_stages, format_table
from pipelines.commands._shared import show_progress as _progress
from pipelines.config import ConfigError, JobConfig, load_config
from pipelines.run import parse_as_of, run_pipeline
from pipelines.workspace import Workspace
from profiling.keys import load_master_key
from profiling.pseudonyms import PERSON, pseudonymize_one

__all__ = ["RECOMMEND_STAGES", "register"]

# The stages a refresh needs: the consent gate reads the ledger, the lists read the popularity release.
RECOMMEND_STAGES = ("consent-ledger", "popularity", "recommendations")


def _recommend(args: argparse.Namespace) -> None:
    config = load_config(args.config) if args.config else JobConfig()
    config = config.with_overrides(workspace=args.workspace, key_file=args.key_file,
                                   as_of=parse_as_of(args.as_of) if args.as_of else None, k=args.k)
    workspace = Workspace(config.workspace)
    if args.show:
        _show(workspace, args.show, config)
        return
    if config.as_of is None:
        raise ConfigError("no as-of moment: pass --as-of ISO-TIME or set as_of in the configuration file")
    if not workspace.pseudonymized("orders").is_dir():
        raise ConfigError(f"workspace {workspace.root} has no analytics zone yet; run `portrait run` first")
    summary = run_pipeline(workspace, config.key_file, config.as_of, progress=_progress(args), config=config,
                           stages=RECOMMEND_STAGES)
    print(format_stages(summary))


def _show(workspace: Workspace, account: str, config: JobConfig) -> None:
    if not existing_workspace(workspace.root).outputs("recommendations").is_dir():
        raise ConfigError(f"workspace {workspace.root} has no recommendation lists yet; run `portrait run` first")
    person = pseudonymize_one(account, load_master_key(config.key_file), PERSON, identifier="account_id")
    lists = ds.dataset(workspace.verified(workspace.outputs("recommendations")), format="parquet").to_table(
        filter=pc.field("person_id") == person)
    if not lists.num_rows:
        print(f"account {account} has no list: no consent to be served as of the last run, or not in the workspace")
        return
    print(format_table(lists.drop_columns(["person_id"]).to_pylist()))


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "recommend", help="refresh the recommendation lists on the current analytics zone, or --show an account's",
        description="Re-run the consent gate, the DP popularity release and the top-K scoring on the analytics "
                    "zone the last `portrait run` wrote; with --show ACCOUNT, print that account's list.")
    parser.add_argument("--config", help="job configuration file (TOML), as for `portrait run`")
    parser.add_argument("--workspace", help="workspace folder (default: the config's, else portrait-workspace)")
    parser.add_argument("--key-file", help="master key file (default: the config's, else PORTRAIT_MASTER_KEY)")
    parser.add_argument("--as-of", help="evaluation moment, ISO 8601 (required unless the config sets it)")
    parser.add_argument("--k", type=int, help="items per list (default: the config's, else 10)")
    parser.add_argument("--show", metavar="ACCOUNT", help="print this raw account id's current list and stop")
    parser.set_defaults(handler=_recommend)
