"""The workspace folder every stage reads and writes, and the atomic way to change it.

Layout (kept by every stage)::

    WS/ingested/<table>/      accepted raw rows, Parquet (the identifiable zone)
    WS/pseudonymized/<table>/ pseudonyms + generalized values, Parquet (the analytics zone)
    WS/rejects/<table>/       rejected rows: source_file, source_row, column, reason, detail + raw values
    WS/outputs/<name>/        derived data
    WS/ingest-report.json     rows in / accepted / rejected per table of the last ingest
    WS/ledger.sqlite          consent and privacy-budget ledgers, audit log

Owner-only: opening a workspace tightens the process umask to 077 (``profiling.file_modes``), so
every folder a stage creates is 0700 and every file 0600 (the ledger's ``-wal``/``-shm`` take the
ledger's mode); each stage also takes group and other permissions off the root and the ledger.

Folders are replaced whole: a stage writes into a staging folder inside the workspace and
``publish`` renames the results into place, so a failed or interrupted stage leaves the
previous contents as they were. A stage's report (``WS/ingest-report.json``,
``WS/identity-report.json``) is published in the same step as its folders: a journal
(``.publish-*.json``) records every rename first, and a job killed midway is finished by the next
one, so a report never describes other data than the folders beside it. Hidden entries
(``.staging-*``, ``.retired-*``, ``.publish-*``, ``.lock``) are the machinery of that and are
settled by the next stage that runs or job that takes the job lock. ``publish`` also writes a
``_manifest.json`` (each file's size and SHA-256) into every folder it publishes, and readers
check it through ``verified`` (``pipelines.manifest``): a damaged file stops the stage, named.

One job at a time changes the workspace: ``Workspace.job_lock`` (an ``flock`` on ``WS/.job-lock``)
is held by ``portrait run`` and ``portrait ingest`` for their whole duration and taken by every
request that changes what a job reads (erasure, correction, consent changes), so such a request
waits for a running job instead of racing with it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import inspect
import json
import os
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, ParamSpec, TypeVar

import pyarrow as pa
import pyarrow.dataset as ds

from pipelines.manifest import verify_folder, write_manifests
from profiling.errors import WorkspaceError
from profiling.file_modes import make_owner_only, restrict_to_owner
from profiling.purposes import check_output_read
from profiling.schema import TABLE_NAMES, arrow_schema

__all__ = ["JOB_LOCK", "Workspace", "holding_job_lock", "write_json_atomic"]

JOB_LOCK = ".job-lock"  # the file whose flock is the workspace's job lock


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        _write_json(Path(temporary), payload)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_json(path: Path, payload: object) -> None:
    """``payload`` as indented JSON (keys sorted) in ``path``, on disk before this returns."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


class Workspace:
    """Paths of one workspace folder (default ``./portrait-workspace``).

    Creating one tightens the process umask to 077, so what is written from then on is owner-only.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        restrict_to_owner()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def ingested(self, table: str) -> Path:
        return self.root / "ingested" / table

    def pseudonymized(self, table: str) -> Path:
        """Folder of ``table`` in the analytics zone (pseudonyms and generalized values, no identifiers)."""
        return self.root / "pseudonymized" / table

    def rejects(self, table: str) -> Path:
        return self.root / "rejects" / table

    def outputs(self, name: str) -> Path:
        return self.root / "outputs" / name

    @property
    def ingest_report(self) -> Path:
        return self.root / "ingest-report.json"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.sqlite"

    def holds(self, path: str | os.PathLike) -> bool:
        """True when ``path``, symlinks resolved (also where it does not exist yet), is the workspace or inside it."""
        root, target = self.root.resolve(), Path(path).resolve()
        return target == root or root in target.parents

    def require_ingested(self) -> None:
        """Raise ``WorkspaceError`` unless every raw table has been ingested."""
        missing = [t for t in TABLE_NAMES if not self.ingested(t).is_dir()]
        if missing:
            raise WorkspaceError(
                f"workspace {self.root} has no ingested {', '.join(missing)}; "
                f"run `portrait ingest --raw DIR --workspace {self.root}` first"
            )

    def verified(self, folder: Path) -> Path:
        """``folder`` (published by this workspace), after checking it against its manifests; a
        ``DamagedFolderError`` names a damaged, missing or unlisted file and the command that rebuilds it."""
        zone, *inside = Path(folder).relative_to(self.root).parts
        command = "ingest --raw DIR" if zone == "ingested" else "run"
        rebuild = f"rerun `portrait {command} --workspace {self.root}` to rebuild it"
        if zone == "outputs":  # some outputs (a popularity release) are kept by a run that cannot redo them
            rebuild = f"remove {self.root.joinpath(zone, *inside[:1])} and {rebuild}"
        return verify_folder(Path(folder), rebuild=rebuild)

    def output(self, name: str, *, purpose: str) -> Path:
        """The published folder ``WS/outputs/<name>`` for a reader serving ``purpose``, checked first.

        The one door to outputs by purpose: ``profiling.purposes.check_output_read`` raises
        ``OutputAccessError`` (naming the purpose, the output and who may read it) before anything
        is opened when the catalogue does not give the output to ``purpose``; then the folder is
        checked against its manifests like every other (``verified``).
        """
        check_output_read(purpose, name)
        folder = self.outputs(name)
        if not folder.is_dir():
            raise WorkspaceError(f"{folder} does not exist; run `portrait run --workspace {self.root} ...` first")
        return self.verified(folder)

    def dataset(self, table: str) -> ds.Dataset:
        """The ingested rows of ``table`` as a pyarrow dataset (read lazily, in batches), checked first."""
        self.require_ingested()
        return ds.dataset(self.verified(self.ingested(table)), format="parquet", schema=arrow_schema(table))

    def read(self, table: str, columns: list[str] | None = None) -> pa.Table:
        return self.dataset(table).to_table(columns=columns)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh folder inside the workspace (same file system, so renames are atomic), removed on exit.

        Also clears what killed jobs left behind (see ``sweep``) before the new work starts.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        make_owner_only(self.root, *(self.ledger.with_name(self.ledger.name + end) for end in ("", "-wal", "-shm")))
        self.sweep()
        folder = self.root / f".staging-{os.getpid()}-{uuid.uuid4().hex}"
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def publish(self, replacements: Mapping[Path, Path], *, reports: Mapping[Path, object] | None = None) -> None:
        """Move each staged folder onto its destination, replacing what was there, and write each of ``reports``
        (a workspace file such as ``WS/ingest-report.json``: its JSON payload) in the same step.

        Under an exclusive lock on the workspace, a journal (``WS/.publish-<id>.json``) records every
        move first; then all old folders are moved aside, all new ones moved in, each report renamed
        onto its file, the journal removed and the old folders deleted. A reader never sees a
        half-written folder or report. A job killed midway leaves its journal and staged data, and
        ``sweep`` (the next stage or job) finishes the moves: the folders and their reports are
        published together. Each staged folder gets its manifests first.
        """
        for destination, staged in replacements.items():
            if not staged.is_dir():
                raise WorkspaceError(f"nothing staged for {destination}")
            write_manifests(staged)
        publication = uuid.uuid4().hex
        held_reports = self.root / f".staging-{os.getpid()}-{publication}"  # swept like any staging folder
        try:
            files = []
            for number, (path, payload) in enumerate((reports or {}).items()):
                held_reports.mkdir(exist_ok=True)
                files.append((held_reports / f"{number}-{Path(path).name}", Path(path)))
                _write_json(files[-1][0], payload)
            moves = [(staged, destination, destination.parent / f"{_RETIRED}{destination.name}-{publication}")
                     for destination, staged in replacements.items()]
            with self._lock():
                journal = self.root / f"{_JOURNAL}{publication}.json"
                write_json_atomic(journal, {"folders": [[self._relative(p) for p in move] for move in moves],
                                            "reports": [[self._relative(p) for p in pair] for pair in files]})
                self._settle(journal)
        finally:
            shutil.rmtree(held_reports, ignore_errors=True)

    def _relative(self, path: Path) -> str:
        """``path`` relative to the workspace root (a journal stays valid when the workspace is moved)."""
        return os.path.relpath(os.path.abspath(path), os.path.abspath(self.root))

    def _settle(self, journal: Path) -> None:
        """Do what the publish ``journal`` records, skipping each step already done; then remove the journal and
        the old folders (an old folder whose replacement is gone, its staging removed, is put back)."""
        plan = json.loads(journal.read_text(encoding="utf-8"))
        moves = [[self.root / p for p in move] for move in plan["folders"]]
        for staged, destination, aside in moves:
            if staged.is_dir() and destination.exists():
                os.rename(destination, aside)
        for staged, destination, _ in moves:
            if staged.is_dir():
                destination.parent.mkdir(parents=True, exist_ok=True)
                os.rename(staged, destination)
        for staged_report, destination in ([self.root / p for p in pair] for pair in plan["reports"]):
            if staged_report.is_file():
                os.replace(staged_report, destination)
        journal.unlink()
        for _, destination, aside in moves:
            if destination.exists():
                shutil.rmtree(aside, ignore_errors=True)
            elif aside.exists():
                os.rename(aside, destination)

    def sweep(self) -> None:
        """Finish publishes a killed job left half done (their journals), remove staging folders of jobs that
        are no longer running, and put back old folders whose replacement never arrived."""
        if not self.root.is_dir():
            return
        with self._lock():
            for leftover in self.root.glob(f".{_JOURNAL}*"):  # a journal whose writing was cut short: not begun
                leftover.unlink(missing_ok=True)
            for journal in sorted(self.root.glob(f"{_JOURNAL}*.json")):  # before staged data is removed
                self._settle(journal)
            for folder in self.root.glob(".staging-*"):
                pid = folder.name.split("-")[1]
                if not (pid.isdigit() and _alive(int(pid))):
                    shutil.rmtree(folder, ignore_errors=True)
            for aside in [*self.root.glob(f"{_RETIRED}*"), *self.root.glob(f"*/{_RETIRED}*")]:
                destination = aside.parent / aside.name[len(_RETIRED):].rsplit("-", 1)[0]
                if destination.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                else:
                    os.rename(aside, destination)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def job_lock(self, holder: str, *, create: bool = False) -> Iterator[None]:
        """Hold the workspace's exclusive job lock while the block runs (waiting for it if need be).

        ``holder`` names what holds it (``"portrait run"``); a process that has to wait prints one
        line to stderr naming the holder, its pid and start time, then waits as long as that job
        runs. The lock is an ``flock`` on ``WS/.job-lock``: the operating system releases it when
        its process ends, however it ends, so a killed job never leaves the workspace locked; once
        taken, ``sweep`` finishes what a killed job left half published before the block runs.
        Re-entrant within one thread (a locked operation calling another does not wait for
        itself). A missing workspace folder is a ``WorkspaceError`` unless ``create`` (ingest):
        then it is made, and removed again on exit if it still holds nothing but lock files.
        """
        held = _held_job_locks()
        identity = str(self.root.resolve())
        if identity in held:
            yield
            return
        created = create and not self.root.exists()
        handle = self._acquire_job_lock(holder, create=create)
        held.add(identity)
        try:
            self.sweep()  # what a killed job left half published is finished before this one reads anything
            yield
        finally:
            held.discard(identity)
            try:
                if created and {p.name for p in self.root.iterdir()} <= {JOB_LOCK, ".lock"}:
                    for name in (".lock", JOB_LOCK):  # still holding the lock: see _acquire_job_lock
                        (self.root / name).unlink(missing_ok=True)
                    self.root.rmdir()
            except OSError:
                pass  # something else appeared in the new folder meanwhile: it stays
            finally:
                handle.truncate(0)  # who held it is told only while it is held
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()

    def _acquire_job_lock(self, holder: str, *, create: bool) -> IO[str]:
        """The open, locked ``WS/.job-lock`` with ``holder`` written into it."""
        path = self.root / JOB_LOCK
        announced = False
        while True:
            if not self.root.is_dir():
                if not create:
                    raise WorkspaceError(f"workspace {self.root} does not exist; run "
                                         f"`portrait ingest --raw DIR --workspace {self.root}` first")
                self.root.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+", encoding="utf-8")
            try:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if not announced:
                        handle.seek(0)
                        print(f"portrait: waiting for the job holding workspace {self.root} "
                              f"({_describe_holder(handle.read())}) to finish", file=sys.stderr, flush=True)
                        announced = True
                    fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
                except FileNotFoundError:
                    current = False
                if current:
                    handle.seek(0)
                    handle.truncate()
                    handle.write(json.dumps({"holder": holder, "pid": os.getpid(),
                                             "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}))
                    handle.flush()
                    return handle
            except BaseException:
                handle.close()
                raise
            # The holder removed the folder it had created (and this file with it): lock the new one.
            handle.close()


_P = ParamSpec("_P")
_R = TypeVar("_R")


def holding_job_lock(holder: str, *, create: bool = False) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Run the decorated function under ``workspace.job_lock(holder, create=create)``.

    The workspace is the function's ``workspace`` argument (given by position or by name).
    """
    def decorate(function: Callable[_P, _R]) -> Callable[_P, _R]:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            workspace = signature.bind_partial(*args, **kwargs).arguments.get("workspace")
            if not isinstance(workspace, Workspace):
                return function(*args, **kwargs)  # the function's own check says what is wrong
            with workspace.job_lock(holder, create=create):
                return function(*args, **kwargs)

        return locked

    return decorate


_thread_state = threading.local()


def _held_job_locks() -> set[str]:
    """Workspaces (resolved roots) whose job lock this thread holds."""
    if not hasattr(_thread_state, "job_locks"):
        _thread_state.job_locks = set()
    return _thread_state.job_locks


def _describe_holder(text: str) -> str:
    try:
        facts = json.loads(text)
        return f"{facts['holder']}, pid {facts['pid']}, started {facts['started_at']}"
    except (ValueError, KeyError, TypeError):
        return "a job that is just starting"


_RETIRED = ".retired-"
_JOURNAL = ".publish-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
