"""The flow process's own memory settings, observed in a real process (glibc's malloc_info)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ARENAS = """
import ctypes, sys, threading
from monitor.ops import limit_malloc_arenas
if sys.argv[1] == "limited":
    limit_malloc_arenas()
barrier = threading.Barrier(8)
kept = []
def work() -> None:
    barrier.wait()  # all alive at once, so no thread inherits the arena of one that ended
    kept.append([bytearray(4096) for _ in range(64)])  # > 512 bytes: glibc malloc, not pymalloc
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
libc = ctypes.CDLL("libc.so.6")
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
"""


def _arenas(tmp_path: Path, mode: str) -> int:
    report = tmp_path / f"{mode}.xml"
    subprocess.run([sys.executable, "-c", ARENAS, mode, str(report)], cwd=ROOT, check=True, timeout=120)
    return report.read_text().count("<heap nr=")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc arenas")
def test_flow_threads_share_two_malloc_arenas(tmp_path: Path) -> None:
    from monitor.ops import MALLOC_ARENAS

    assert _arenas(tmp_path, "default") > MALLOC_ARENAS  # the test's threads do spread over arenas
    assert _arenas(tmp_path, "limited") <= MALLOC_ARENAS
