"""Disk full and read-only data folders: one clear error line naming the path, non-zero exit, nothing corrupted.

Real file systems: a tmpfs of a chosen size is mounted as the data folder (needs root, as in the dev
sandbox; elsewhere those cases skip with the reason). A data path under a regular file and, for
non-root users, a chmod 0555 folder run everywhere.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from tests.chaos.chaoslib import (
    CleanRun,
    FaultTable,
    Servers,
    cli_cmd,
    cli_env,
    db_figures,
    one_line_problems,
    run_cli,
    write_config,
)

from monitor.store import open_store

pytestmark = pytest.mark.usefixtures("prefect_harness")
RESULTS: dict[str, tuple[bool, str]] = {}
MID_RUN: dict[str, Any] = {}


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the data-path-under-a-file case covers non-root)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(path)], check=True, capture_output=True)


def one_clear_line(res: subprocess.CompletedProcess[str], must_name: str) -> list[str]:
    """What is wrong with the CLI's answer to a storage fault (empty: it is right)."""
    problems, lines = one_line_problems(res.returncode, res.stdout, res.stderr)
    if not lines or not lines[-1].startswith("error: ") or must_name not in lines[-1]:
        problems.append(f"path {must_name} not named")
    return problems


def check(name: str, res: subprocess.CompletedProcess[str], must_name: str) -> None:
    problems = one_clear_line(res, must_name)
    last = (res.stderr.strip().splitlines() or [""])[-1]
    RESULTS[name] = (not problems, last if not problems else f"{problems}: {res.stderr.strip()[-300:]}")
    assert not problems, res.stderr[-3000:]


def test_disk_full_before_start(tmp_path: Path, servers: Servers) -> None:
    with tmpfs(tmp_path / "data", "1m") as data:
        config = write_config(tmp_path, data)
        res = run_cli(cli_cmd(config), cli_env(servers), tmp_path)
        check("disk full (1 MB tmpfs, new database)", res, str(data))
        assert not (data / "demo.duckdb").exists()


def test_disk_full_mid_run_then_recovers(tmp_path: Path, servers: Servers, clean_run: CleanRun) -> None:
    """The database fits; the first article batch does not. Then the disk grows and a run completes."""
    probe = tmp_path / "probe.duckdb"
    with open_store(probe):
        pass
    size_kb = probe.stat().st_size // 1024 + 300
    with tmpfs(tmp_path / "data", f"{size_kb}k") as data:
        shutil.copy(probe, data / "demo.duckdb")
        config = write_config(tmp_path, data)
        res = run_cli(cli_cmd(config), cli_env(servers), tmp_path)
        MID_RUN["res"], MID_RUN["data"] = res, data
        # one line, non-zero, no traceback; naming the path is checked in the next test
        problems = [p for p in one_clear_line(res, "") if not p.startswith("path")]
        last = (res.stderr.strip().splitlines() or [""])[-1]
        RESULTS[f"disk full mid-run ({size_kb} KB tmpfs), then disk grown"] = (
            not problems, last[:120] if not problems else str(problems))
        assert not problems, res.stderr[-3000:]
        remount(data, "size=256m")
        servers.reset()
        again = run_cli(cli_cmd(config), cli_env(servers), tmp_path)
        assert again.returncode == 0, again.stderr[-2000:]
        counts, dups = db_figures(data / "demo.duckdb")
        assert counts == clean_run.counts and not any(dups.values())


def test_disk_full_mid_run_names_the_path() -> None:
    if "res" not in MID_RUN:
        pytest.skip("the mid-run disk-full case did not run")
    assert not one_clear_line(MID_RUN["res"], str(MID_RUN["data"])), MID_RUN["res"].stderr[-500:]


def test_read_only_folder_keeps_database(tmp_path: Path, servers: Servers, clean_run: CleanRun) -> None:
    with tmpfs(tmp_path / "data", "64m") as data:
        shutil.copy(clean_run.db, data / "demo.duckdb")
        before = db_figures(data / "demo.duckdb")
        remount(data, "ro")
        config = write_config(tmp_path, data)
        res = run_cli(cli_cmd(config), cli_env(servers), tmp_path)
        check("read-only data folder (ro tmpfs, existing database)", res, str(data))
        remount(data, "rw")
        assert db_figures(data / "demo.duckdb") == before
        con = duckdb.connect(str(data / "demo.duckdb"))  # opens read-write: not corrupted
        con.close()


def test_read_only_empty_folder(tmp_path: Path, servers: Servers) -> None:
    with tmpfs(tmp_path / "data", "64m") as data:
        remount(data, "ro")
        config = write_config(tmp_path, data)
        res = run_cli(cli_cmd(config), cli_env(servers), tmp_path)
        check("read-only data folder (ro tmpfs, no database yet)", res, str(data))


def test_data_path_under_a_file(tmp_path: Path, servers: Servers) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where the data folder should be")
    config = write_config(tmp_path, blocker / "data")
    res = run_cli(cli_cmd(config), cli_env(servers), tmp_path)
    check("data folder path under a regular file", res, str(blocker))


def test_chmod_read_only_folder(tmp_path: Path, servers: Servers) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions (the read-only tmpfs cases cover root)")
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        config = write_config(tmp_path, data)
        res = run_cli(cli_cmd(config), cli_env(servers), tmp_path)
        check("read-only data folder (chmod 0555)", res, str(data))
    finally:
        data.chmod(0o755)


def test_zz_disk_rows(fault_table: FaultTable) -> None:
    """Adds the storage rows to the fault table (runs last in this module)."""
    for name, (ok, note) in RESULTS.items():
        fault_table.add(name, 1, int(ok), note[-160:])
    assert RESULTS, "no storage fault was tried"
