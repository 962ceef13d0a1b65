"""Seeded synthetic raw data set: the seven tables of ``profiling.schema``, realistic and consistent.

``generate`` writes ``<out_dir>/<table>/part-NNNNN.parquet`` with exactly the data model's Arrow
schemas, and on request the ground truth of who is who (``_truth``) to a folder of its own.
Accounts are made in batches; each batch draws from its own stream
``np.random.default_rng([seed, batch_index])`` and writes one part file per table, so memory is
bounded by the batch and the output is byte-identical for the same parameters. The catalogue, the
merchants and a pool of shared devices come from a separate stream common to all batches.

Everything is vectorized (numpy and pyarrow compute); Python loops run per batch or per small word
list, never per row. Times are int64 microseconds since the Unix epoch (UTC) until they become
Arrow timestamps; money is in CNY unless an order says otherwise, weights in kilograms.

No privacy guarantee applies here: the data is made up and identifies nobody, but it is shaped
like personal data (names, phones, addresses, ID numbers) so that pseudonymization and the
privacy mechanisms downstream can be exercised on it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context

from tqdm import tqdm

from pipelines.synthetic._batches import _write_batch, _write_catalogue
from pipelines.synthetic._output import _checked_out_dir, _checked_truth_dir, _partial_folder
from pipelines.synthetic._run import _checked_run, _workers
from pipelines.synthetic._truth import TRUTH_TABLES
from profiling.schema import TABLE_NAMES

__all__ = ["generate"]


def generate(out_dir: str | os.PathLike, accounts: int, seed: int, *, catalogue_items: int = 20_000,
             batch_accounts: int = 100_000, until: datetime = datetime(2026, 11, 1, tzinfo=UTC),
             truth_dir: str | os.PathLike | None = None, progress: bool = True) -> dict[str, int]:
    """Write a synthetic raw data set of ``accounts`` accounts to the new folder ``out_dir``; return rows per table.

    Writes ``out_dir/<table>/part-NNNNN.parquet`` for every table of ``profiling.schema`` (one
    part per batch of ``batch_accounts`` accounts; the catalogue in one part), each with exactly
    the table's Arrow schema. About 10 orders, 7.5 waybills, 2 devices, 6 device events and 6
    consent events per account. All timestamps lie in [2000-01-01, ``until``] (UTC). The same
    arguments give byte-identical files. The data set appears at ``out_dir`` only when complete:
    it is written to a hidden sibling folder and renamed. A batch of 100,000 accounts takes about
    1 GB of memory per worker process.

    About 3% of holders keep a second account, about 5% share a family device with their household
    (2 to 4 holders, each signing in on it), 1.5% use public devices of a shared pool. With
    ``truth_dir``, which of these accounts and devices belong to one human is written there
    (``accounts/`` and ``devices/`` part files, see ``pipelines.synthetic._truth``), as
    deterministically as the rest and as atomically; it must lie apart from ``out_dir``.

    Raises ``ValueError`` for a bad parameter, an ``out_dir`` or ``truth_dir`` that exists and is
    not empty, or a ``truth_dir`` inside ``out_dir`` (or holding it).

    >>> import tempfile
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as scratch:
    ...     rows = generate(Path(scratch) / "raw", accounts=20, seed=1, catalogue_items=100, progress=False)
    >>> rows["accounts"], rows["catalogue"], list(rows) == list(TABLE_NAMES)
    (20, 100, True)
    """
    run = _checked_run(accounts, seed, catalogue_items, batch_accounts, until)
    out = _checked_out_dir(out_dir)
    truth = _checked_truth_dir(truth_dir, out) if truth_dir is not None else None
    with contextlib.ExitStack() as folders:
        partial = folders.enter_context(_partial_folder(out))
        truth_partial = str(folders.enter_context(_partial_folder(truth, TRUTH_TABLES))) if truth else None
        rows = dict.fromkeys(TABLE_NAMES, 0)
        rows["catalogue"] = _write_catalogue(run, partial)
        # ``_write_batch`` is looked up in this package's namespace, where tests replace it.
        with tqdm(total=run.batches, unit="batch", desc="synthetic data", disable=not progress, file=sys.stderr) as bar:
            workers = _workers(run.batches)
            if workers == 1:
                for batch_index in range(run.batches):
                    for name, count in _write_batch(run, batch_index, str(partial), truth_partial).items():
                        rows[name] += count
                    bar.update()
            else:
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                    futures = [pool.submit(_write_batch, run, b, str(partial), truth_partial)
                               for b in range(run.batches)]
                    try:
                        for future in futures:
                            for name, count in future.result().items():
                                rows[name] += count
                            bar.update()
                    except BaseException:
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
    return rows
