"""Imported once by the extraction workers' forkserver (`extract.extraction_pool`), never by anyone else.

It loads and warms what every worker needs (trafilatura and its date parser, the language model,
MinHash, justext's stoplists), then freezes the garbage collector's view of those objects. Workers
are forked from this state: they start warm, and the pages holding these objects stay shared with
the forkserver instead of being copied into every worker the first time the collector walks them.

Workers also skip importing the parent's `__main__` again, which multiprocessing does in every
process it starts so that functions defined there can be unpickled. Workers only run functions of
`monitor.extract`; the parent's main module would add, to each worker's private memory, 9 MB for
the `monitor` command (typer, rich) and 28 MB for bench/pipeline.py (its harness, DuckDB, Arrow).
"""

import gc
import multiprocessing.spawn

from monitor import extract, novelty  # noqa: F401  (imported here so that the workers inherit them)


def _skip_main(_: str) -> None:
    return None


# private hooks (CPython 3.11's multiprocessing has no public switch); the forkserver and its forks are ours alone
multiprocessing.spawn._fixup_main_from_path = _skip_main  # type: ignore[attr-defined]
multiprocessing.spawn._fixup_main_from_name = _skip_main  # type: ignore[attr-defined]

extract.warm_up()
gc.freeze()
