"""Every config key given a wrong type or a wrong value: the CLI prints one clear line naming the file and
the key, exits non-zero, prints no traceback.

The keys are found by walking the pydantic models of src/monitor/config.py, so a key added later is
swept without touching this file. Each case is a real TOML file in a copy of the demo config and a
real `python -m monitor.cli check` (and a sample through `run`).
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import tomllib
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel
from tests.chaos.chaoslib import PYTHON, FaultTable, Servers, cli_env, one_line_problems, write_config

from monitor.config import MonitorFile, SourceConfig, TopicConfig

FILES = {"monitor": "monitor.toml", "sources": "sources.toml", "topics": "topics.toml"}


# ---- a small TOML writer (only what the config files use) ---------------------------------------


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_scalar(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_scalar(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def dump_toml(data: dict[str, Any], prefix: str = "") -> str:
    lines = [f"{k} = {_scalar(v)}" for k, v in data.items()
             if not isinstance(v, dict) and not _is_table_list(v)]
    out = "\n".join(lines) + ("\n" if lines else "")
    for k, v in data.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and v and not all(isinstance(x, (str, int, float)) for x in v.values()):
            out += f"\n[{name}]\n" + dump_toml(v, name + ".")
        elif isinstance(v, dict):
            out += f"\n[{name}]\n" + "\n".join(f"{json.dumps(x)} = {_scalar(y)}" for x, y in v.items()) + "\n"
        elif _is_table_list(v):
            for item in v:
                out += f"\n[[{name}]]\n" + dump_toml(item, name + ".")
    return out


# ---- walking the models -------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    file: str  # monitor | sources | topics
    key: tuple[str | int, ...]  # path into the TOML data
    value: Any
    why: str

    @property
    def label(self) -> str:
        return f"{FILES[self.file]}:{'.'.join(map(str, self.key))}={self.why}"


def _unwrap(tp: Any) -> tuple[Any, list[Any]]:
    """The base type of an annotation (Optional removed) and the constraint metadata on it."""
    meta: list[Any] = []
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            args = typing.get_args(tp)
            tp, meta = args[0], [*meta, *args[1:]]
        elif origin in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        else:
            return tp, meta


def wrong_type(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "maybe"
    if tp in (int, float):
        return "lots"
    if tp is str:
        return 12345
    if origin is typing.Literal:
        return "no-such-choice"
    if origin is list or origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        return 7
    raise AssertionError(f"no wrong value for {tp}")


def wrong_values(meta: list[Any], tp: Any) -> list[tuple[Any, str]]:
    out: list[tuple[Any, str]] = []
    for m in meta:
        c: Any
        for c in getattr(m, "metadata", [m]):
            bound: Any = getattr(c, "ge", None) if isinstance(c, annotated_types.Ge) else getattr(c, "le", None)
            if isinstance(c, annotated_types.Ge):
                out.append((bound - 1, "below minimum"))
            elif isinstance(c, annotated_types.Gt):
                out.append((c.gt, "not above minimum"))
            elif isinstance(c, annotated_types.Le):
                out.append((bound + 1 if tp is int else bound * 2 + 1, "above maximum"))
            elif isinstance(c, annotated_types.MaxLen):
                out.append(("a" * (c.max_length + 1), "too long"))
            elif hasattr(c, "pattern") and c.pattern:
                out.append(("Not Valid!", "does not match the pattern"))
    return out


def model_cases(model: type[BaseModel], file: str, prefix: tuple[str | int, ...]) -> list[Case]:
    cases: list[Case] = []
    for name, info in model.model_fields.items():
        tp, meta = _unwrap(info.annotation)
        meta = meta + list(info.metadata)
        key = (*prefix, name)
        cases.append(Case(file, key, wrong_type(tp), "wrong type"))
        cases += [Case(file, key, v, why) for v, why in wrong_values(meta, tp)]
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            cases += model_cases(tp, file, key)
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            if isinstance(item, type) and issubclass(item, BaseModel):
                cases += model_cases(item, file, (*key, 0))
            else:
                cases.append(Case(file, key, [wrong_type(_unwrap(item)[0])], "wrong item type"))
        elif typing.get_origin(tp) is dict:
            cases.append(Case(file, key, {"k": wrong_type(_unwrap(typing.get_args(tp)[1])[0])},
                              "wrong entry type"))
    return cases


VALIDATED_VALUES = [  # values the field validators (not the types) must refuse
    Case("monitor", ("fetch", "allow_private"), ["10.0.0.0/33"], "bad network"),
    Case("monitor", ("alerts", "channels", 0, "url"), "hooks.example.org/x", "URL without scheme"),
    Case("monitor", ("alerts", "channels", 0, "topics"), ["no-such-topic"], "unknown topic"),
    Case("sources", ("sources", 0, "url"), "ftp://example.org/feed", "not http(s)"),
    Case("sources", ("sources", 1, "id"), "globalwire", "duplicate id"),
    Case("topics", ("topics", 1, "id"), "ukraine-peace-talks", "duplicate id"),
    Case("monitor", ("storage", "pathh"), "x", "unknown key"),
    Case("monitor", ("alerts", "channels", 0, "digest_cron"), "61 25 * * *", "not a cron expression"),
    Case("topics", ("topics", 0, "query"), '("peace talks" AND', "query syntax error"),
]
# values config.py accepts today although a scheduler cannot use them (see test_schedule_values_checked)
SCHEDULE_GAPS = [
    Case("monitor", ("schedule", "timezone"), "Mars/Olympus_Mons", "unknown time zone"),
    Case("monitor", ("schedule", "cron"), "every day at noon", "not a cron expression"),
]


def all_cases() -> list[Case]:
    cases = model_cases(MonitorFile, "monitor", ())
    cases += model_cases(SourceConfig, "sources", ("sources", 0))
    cases += model_cases(TopicConfig, "topics", ("topics", 0))
    return cases + VALIDATED_VALUES


def _base(config: Path) -> dict[str, dict[str, Any]]:
    return {"monitor": tomllib.loads((config / "monitor.toml").read_text()),
            "sources": tomllib.loads((config / "sources.toml").read_text()),
            "topics": tomllib.loads((config.parent / "topics.toml").read_text())}


def _set(data: dict[str, Any], key: tuple[str | int, ...], value: Any) -> None:
    node: Any = data
    for k in key[:-1]:
        if isinstance(k, str) and k not in node:
            node[k] = {}
        node = node[k]
    node[key[-1]] = value


def _path_of(config: Path, file: str) -> Path:
    return config.parent / "topics.toml" if file == "topics" else config / FILES[file]


@dataclass
class Outcome:
    case: Case
    rc: int
    stdout: str
    stderr: str

    def problems(self) -> list[str]:
        out, lines = one_line_problems(self.rc, self.stdout, self.stderr)
        line = lines[0] if lines else ""
        if FILES[self.case.file] not in line:
            out.append("file not named")
        names = [str(k) for k in self.case.key if isinstance(k, str)]
        if not re.search(".*".join(re.escape(n) for n in names), line) and self.case.why != "query syntax error":
            out.append("key not named")
        return out


def write_case(case: Case, folder: Path) -> Path:
    config = write_config(folder, folder / "data")
    target = copy.deepcopy(_base(config)[case.file])
    _set(target, case.key, case.value)
    _path_of(config, case.file).write_text(dump_toml(target))
    return config


def run_case(case: Case, folder: Path, env: dict[str, str]) -> Outcome:
    """In-process through the CLI's own entry (click's runner): the same code path, no interpreter start."""
    from typer.testing import CliRunner

    from monitor.cli import app

    config = write_case(case, folder)
    res = CliRunner().invoke(app, ["check", "--config", str(config)], env=env)
    err = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        err += "\nTraceback (uncaught in-process): " + repr(res.exception)
    return Outcome(case, res.exit_code, res.stdout, err)


def run_case_subprocess(case: Case, folder: Path, env: dict[str, str]) -> Outcome:
    """A real `python -m monitor.cli run`: the verb users schedule must fail the same way, before any work."""
    config = write_case(case, folder)
    cmd = [PYTHON, "-m", "monitor.cli", "run", "--config", str(config), "--format", "quiet"]
    res = subprocess.run(cmd, env=env, cwd=folder, capture_output=True, text=True, timeout=120)
    return Outcome(case, res.returncode, res.stdout, res.stderr)


def test_toml_writer_round_trips(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "data")
    for file, data in _base(config).items():
        assert tomllib.loads(dump_toml(data)) == data, file


def test_every_key_wrong(tmp_path: Path, servers: Servers, fault_table: FaultTable) -> None:
    cases = all_cases()
    env = cli_env(servers)
    outcomes = [run_case(c, tmp_path / f"c{i}", env) for i, c in enumerate(cases)]
    sample = [c for c in cases if c.why == "wrong type"][::16] + VALIDATED_VALUES[:2]
    with ThreadPoolExecutor(2) as pool:
        outcomes += list(pool.map(lambda ic: run_case_subprocess(ic[1], tmp_path / f"r{ic[0]}", env),
                                  enumerate(sample)))
    bad = {o.case.label: (o.problems(), o.stderr.strip()[:200]) for o in outcomes if o.problems()}
    keys = {(c.file, c.key) for c in cases}
    fault_table.add("config: wrong type/value per key (check + run)", len(outcomes), len(outcomes) - len(bad),
                    f"{len(keys)} keys from the pydantic models; failures: {sorted(bad) or 'none'}")
    example = next(o.stderr.strip() for o in outcomes if not o.problems())
    print(f"\nconfig sweep: {len(outcomes)} cases over {len(keys)} keys; e.g. {example}")
    assert not bad, json.dumps(bad, indent=1)


def test_missing_secret_and_syntax_error(tmp_path: Path, servers: Servers, fault_table: FaultTable) -> None:
    """The two problems outside the models: an unset ${VAR} and a file that is not TOML."""
    env = cli_env(servers)
    del env["DEMO_WEBHOOK"]
    config = write_config(tmp_path, tmp_path / "data")
    monitor_toml = config / "monitor.toml"  # the demo gives the webhook a default: make it required here
    monitor_toml.write_text(re.sub(r"\$\{DEMO_WEBHOOK:-[^}]*\}", "${DEMO_WEBHOOK}", monitor_toml.read_text()))
    res = subprocess.run([PYTHON, "-m", "monitor.cli", "run", "--config", str(config)], env=env,
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "monitor.toml" in lines[0] and "DEMO_WEBHOOK" in lines[0] and "url" in lines[0]
    (config / "sources.toml").write_text("[[sources]\nid = 'x'\n")
    res2 = subprocess.run([PYTHON, "-m", "monitor.cli", "check", "--config", str(config)], env=cli_env(servers),
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    lines2 = res2.stderr.strip().splitlines()
    assert res2.returncode == 2 and len(lines2) == 1 and "sources.toml" in lines2[0], res2.stderr
    fault_table.add("config: unset ${VAR} / TOML syntax error", 2, 2, f"e.g. {lines[0][-90:]}")



def test_schedule_values_checked(tmp_path: Path, servers: Servers) -> None:
    env = cli_env(servers)
    outcomes = [run_case(c, tmp_path / f"s{i}", env) for i, c in enumerate(SCHEDULE_GAPS)]
    assert all(not o.problems() for o in outcomes), [(o.case.label, o.problems()) for o in outcomes]
