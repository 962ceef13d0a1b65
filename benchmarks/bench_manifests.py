"""What checking the published folders' manifests adds to ``portrait run``.

    python benchmarks/bench_manifests.py --accounts 100000 [--repeats 2]

Generates and ingests the data once, then runs the whole job (every stage) in a child process,
alternately with the manifest checks and with ``pipelines.manifest.verify_folder`` replaced by a
no-op, ``--repeats`` times each; and, in a fresh process, times checking every published folder
once (the checks' whole hashing work: each file a run reads is hashed once per process) and
writing every manifest again (what ``publish`` adds). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_RUN = """
import datetime as dt, sys, time
import pipelines.manifest, pipelines.workspace
from pipelines.run import run_pipeline
from pipelines.workspace import Workspace
if sys.argv[3] == "unchecked":
    pipelines.workspace.verify_folder = lambda folder, rebuild: folder
started = time.perf_counter()
run_pipeline(Workspace(sys.argv[1]), sys.argv[2], dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc), progress=False)
print(time.perf_counter() - started)
"""

_HASH = """
import json, sys, time
from pathlib import Path
from pipelines.manifest import verify_folder, write_manifests
root = Path(sys.argv[1])
folders = [folder for zone in ("ingested", "pseudonymized", "outputs", "vault")
           for folder in sorted((root / zone).iterdir()) if folder.is_dir()]  # each as published
size = sum(p.stat().st_size for folder in folders for p in folder.rglob("*") if p.is_file())
started = time.perf_counter()
for folder in folders:
    verify_folder(folder, rebuild="")
checked = time.perf_counter() - started
import pipelines.manifest as manifest
manifest._hashed.clear()
started = time.perf_counter()
for folder in folders:
    write_manifests(folder)
written = time.perf_counter() - started
print(json.dumps({"bytes": size, "check_seconds": checked, "write_seconds": written}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-manifests-") as folder:
        root = Path(folder)
        key_file = root / "keys" / "master.key"
        portrait = [sys.executable, "-m", "pipelines.cli", "-q"]
        subprocess.run([*portrait, "keys", "init", "--key-file", str(key_file)], check=True, capture_output=True)
        subprocess.run([*portrait, "synth", "--out", str(root / "raw"), "--accounts", str(args.accounts)],
                       check=True, capture_output=True)
        subprocess.run([*portrait, "ingest", "--raw", str(root / "raw"), "--workspace", str(root / "ingested"),
                        "--key-file", str(key_file)], check=True, capture_output=True)
        seconds: dict[str, list[float]] = {"checked": [], "unchecked": []}
        for _ in range(args.repeats):
            for mode in seconds:
                workspace = root / f"ws-{mode}"
                shutil.rmtree(workspace, ignore_errors=True)
                shutil.copytree(root / "ingested", workspace)
                done = subprocess.run([sys.executable, "-c", _RUN, str(workspace), str(key_file), mode],
                                      check=True, capture_output=True, text=True)
                seconds[mode].append(float(done.stdout.strip().splitlines()[-1]))
                print(f"{mode}: {seconds[mode][-1]:.1f} s", flush=True)
        hashing = json.loads(subprocess.run([sys.executable, "-c", _HASH, str(root / "ws-checked")], check=True,
                                            capture_output=True, text=True).stdout.strip().splitlines()[-1])
    checked, unchecked = (statistics.median(seconds[m]) for m in ("checked", "unchecked"))
    print(json.dumps({"accounts": args.accounts, "run_checked_s": round(checked, 2),
                      "run_unchecked_s": round(unchecked, 2), "added_s": round(checked - unchecked, 2),
                      "published_mb": round(hashing["bytes"] / 1e6, 1),
                      "check_all_folders_s": round(hashing["check_seconds"], 3),
                      "write_all_manifests_s": round(hashing["write_seconds"], 3),
                      "runs": seconds}))


if __name__ == "__main__":
    main()
