"""Imported once by the extraction workers' forkserver (`extract.extraction_pool`), never by anyone else.

It loads and warms what every worker needs (trafilatura and its date parser, the language model,
MinHash, justext's stoplists), then freezes the garbage collector's view of those objects. Workers
are forked from this state: they start warm, and the pages holding these objects stay shared with
the forkserver instead of being copied into every worker the first time the collector walks them.
"""

import gc

from monitor import extract, novelty  # noqa: F401  (imported here so that the workers inherit them)

extract.warm_up()
gc.freeze()
