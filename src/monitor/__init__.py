"""news-monitor: watch news sources and tell analysts what is new about the stories they track."""

import os

# Our numpy use (py3langid's classifier, MinHash) is small vector work done in many processes at once.
# OpenBLAS would start a thread per core for each of them, and its idle threads spin: that doubled the
# CPU cost of extracting a page (57.6 -> 28.7 ms/doc, bench/pipeline.py). Set before numpy is imported;
# the extraction workers' forkserver inherits it. A user's own setting wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
