"""Configuration: the TOML files in a config folder, validated by one pydantic model.

A config folder holds `monitor.toml` (storage, schedule, fetch limits, alert channels),
`sources.toml` and `topics.toml` (or the path `monitor.toml` names in `topics_file`). Any string may
use `${VAR}` (required) or `${VAR:-default}` to read the environment; secrets such as webhook URLs
must come that way. Every problem is raised as one ConfigError naming the file, the key and what
is wrong.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from monitor.errors import ConfigError, register_secret

SourceKind = Literal["auto", "rss", "atom", "jsonfeed", "feed", "sitemap", "page", "article"]
ChannelType = Literal["slack", "teams", "discord", "mattermost", "googlechat", "generic", "apprise"]
AlertKind = Literal["new_story", "update", "surge", "source_failing"]
DEFAULT_ALERT_KINDS: tuple[AlertKind, ...] = ("new_story", "update", "surge")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Strict):
    path: str = "data/monitor.duckdb"
    store_html: bool = True
    # "ducklake": several machines share one lake (docs/scaling.md); `path` then only names the run lock
    backend: Literal["duckdb", "ducklake"] = "duckdb"
    catalog: str = ""  # ducklake: a PostgreSQL connection string, from the environment (${MONITOR_LAKE_CATALOG})
    data_path: str = Field(default="", validate_default=True)  # ducklake: Parquet folder or s3://… prefix

    @field_validator("data_path")
    @classmethod
    def _lake_complete(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("backend") == "ducklake" and not (v and info.data.get("catalog")):
            raise ValueError("the ducklake backend needs both storage.catalog and storage.data_path")
        return v


def check_cron(v: str) -> str:
    """A five-field cron expression, or a ValueError saying what is wrong with it."""
    from cronsim import CronSim, CronSimError

    try:
        CronSim(v, datetime.now(UTC))
    except CronSimError as exc:
        raise ValueError(f"not a cron expression: {exc}") from None
    return v


def check_timezone(v: str) -> str:
    try:
        ZoneInfo(v)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {v!r}") from None
    return v


class ScheduleConfig(_Strict):
    interval_minutes: Annotated[int, Field(ge=1, le=7 * 24 * 60)] | None = 30
    cron: str | None = None
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        return None if v is None else check_cron(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)


class FetchConfig(_Strict):
    user_agent: str = "news-monitor/0.1"
    contact_url: str = "https://github.com/news-monitor/news-monitor"  # appended to the User-Agent
    connect_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    read_timeout_s: Annotated[float, Field(gt=0, le=300)] = 20.0
    total_timeout_s: Annotated[float, Field(gt=0, le=600)] = 60.0
    max_bytes: Annotated[int, Field(ge=10_000, le=200_000_000)] = 10_000_000
    concurrency: Annotated[int, Field(ge=1, le=256)] = 16
    per_host: Annotated[int, Field(ge=1, le=32)] = 2
    min_delay_s: Annotated[float, Field(ge=0, le=120)] = 1.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_s: Annotated[float, Field(ge=0, le=60)] = 1.0
    max_redirects: Annotated[int, Field(ge=0, le=20)] = 5
    respect_robots: bool = True
    allow_private: list[str] = Field(default_factory=list)
    batch_size: Annotated[int, Field(ge=1, le=5000)] = 200
    max_links_per_source: Annotated[int, Field(ge=1, le=100_000)] = 500

    @field_validator("allow_private")
    @classmethod
    def _networks_or_hosts(cls, values: list[str]) -> list[str]:
        for v in values:
            if "/" in v:
                try:
                    ipaddress.ip_network(v, strict=False)
                except ValueError as exc:
                    raise ValueError(f"{v!r} is not a network like 10.0.0.0/8") from exc
        return values


class ExtractConfig(_Strict):
    min_words: Annotated[int, Field(ge=0, le=10_000)] = 40
    workers: Annotated[int, Field(ge=0, le=64)] = 2
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0


class NoveltyConfig(_Strict):
    window_hours: Annotated[int, Field(ge=1, le=24 * 90)] = 24 * 14
    duplicate_threshold: Annotated[float, Field(gt=0, le=1)] = 0.8
    story_threshold: Annotated[float, Field(gt=0, le=1)] = 0.3
    # a story on the article's own tracked topic needs less overlap (3+ shared facts still required)
    story_threshold_topic: Annotated[float, Field(gt=0, le=1)] = 0.15
    # overlap with one earlier article above which an article is another report of it (never an update)
    echo_threshold: Annotated[float, Field(gt=0, le=1)] = 0.35
    echo_hours: Annotated[int, Field(ge=1, le=24 * 14)] = 24  # how late a copy or translation comes
    update_min_new_facts: Annotated[int, Field(ge=1, le=100)] = 3
    surge_sources: Annotated[int, Field(ge=2, le=1000)] = 5
    surge_hours: Annotated[int, Field(ge=1, le=24 * 14)] = 6


class ChannelConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    type: ChannelType
    url: str
    topics: list[str] = Field(default_factory=list)  # empty: all topics
    kinds: list[AlertKind] = Field(default_factory=lambda: list(DEFAULT_ALERT_KINDS))
    min_score: float = 0.0
    mode: Literal["instant", "digest"] = "instant"
    digest_cron: str | None = Field(default=None, validate_default=True)  # digest mode: when to send
    digest_timezone: str = "UTC"
    secret: str | None = None  # generic webhooks: HMAC-SHA256 key
    enabled: bool = True

    @field_validator("digest_cron")
    @classmethod
    def _cron(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None:
            if info.data.get("mode") == "digest":
                raise ValueError("a digest channel needs digest_cron (e.g. '0 8 * * *')")
            return v
        return check_cron(v)

    @field_validator("digest_timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        return check_timezone(v)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if v and not re.match(r"^(https?://|[a-z0-9]+://)", v):
            raise ValueError("must be a URL (http(s):// or an apprise URL)")
        return v


class AlertsConfig(_Strict):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 8
    backoff_s: Annotated[float, Field(ge=0, le=3600)] = 30.0
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    source_failing_after: Annotated[int, Field(ge=1, le=1000)] = 3
    channels: list[ChannelConfig] = Field(default_factory=list)


class DashboardConfig(_Strict):
    path: str = "data/dashboard.html"
    days: Annotated[int, Field(ge=1, le=3650)] = 30


class MonitorFile(_Strict):
    """`monitor.toml`."""

    topics_file: str = "topics.toml"
    sources_file: str = "sources.toml"
    storage: StorageConfig = StorageConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    fetch: FetchConfig = FetchConfig()
    extract: ExtractConfig = ExtractConfig()
    novelty: NoveltyConfig = NoveltyConfig()
    alerts: AlertsConfig = AlertsConfig()
    dashboard: DashboardConfig = DashboardConfig()


class SourceConfig(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$", max_length=64)]
    url: str
    kind: SourceKind = "auto"
    name: str | None = None
    outlet: str | None = None  # sources of one outlet (feed + sitemap) count once for surges
    lang: str | None = None
    ignore_robots: bool = False  # only for sources the user owns
    allow_offsite: bool = False
    enabled: bool = True

    @field_validator("url")
    @classmethod
    def _http_only(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL")
        return v


    @property
    def outlet_id(self) -> str:
        from urllib.parse import urlsplit

        return self.outlet or (urlsplit(self.url).hostname or self.id)


class SourcesFile(_Strict):
    sources: list[SourceConfig] = Field(default_factory=list)

    @field_validator("sources")
    @classmethod
    def _unique_ids(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in v:
            if s.id in seen:
                raise ValueError(f"source id {s.id!r} is used twice")
            seen.add(s.id)
        return v


class TopicConfig(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", max_length=64)]
    name: str
    query: str = ""
    queries: dict[str, str] = Field(default_factory=dict)  # per-language queries, OR-ed with `query`
    transliterate: bool = False
    weights: dict[str, float] = Field(default_factory=dict)
    threshold: float = 0.0
    description: str = ""


class TopicsFile(_Strict):
    topics: list[TopicConfig] = Field(default_factory=list)

    @field_validator("topics")
    @classmethod
    def _unique_ids(cls, v: list[TopicConfig]) -> list[TopicConfig]:
        seen: set[str] = set()
        for t in v:
            if t.id in seen:
                raise ValueError(f"topic id {t.id!r} is used twice")
            seen.add(t.id)
        return v


class Settings(_Strict):
    """The whole validated configuration of one config folder."""

    config_dir: Path
    monitor: MonitorFile
    sources: list[SourceConfig]
    topics: list[TopicConfig]

    def resolve(self, path: str) -> Path:
        """A path from config; relative paths are relative to the working directory (like make)."""
        return Path(path).expanduser().resolve()

    @property
    def db_path(self) -> Path:
        return self.resolve(self.monitor.storage.path)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, file: str, key: str) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, file, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got is None or got == "":
            if default is None:
                raise ConfigError(file, key, f"environment variable {name} is not set")
            return default
        register_secret(got)
        return got

    return _ENV_REF.sub(sub, value)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "(syntax)", str(exc)) from None
    except OSError as exc:
        raise ConfigError(str(path), "(file)", exc.strerror or str(exc)) from None


def _validation_to_config_error(file: Path, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    more = len(exc.errors()) - 1
    if more:
        msg += f" (and {more} more problem{'s' if more > 1 else ''})"
    return ConfigError(str(file), key, msg)


def _load_file(path: Path, model: type[_Strict], expand: bool = True) -> Any:
    raw = _read_toml(path)
    if expand:
        raw = _expand_env(raw, str(path), "")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_to_config_error(path, exc) from None


def load_settings(config_dir: str | Path) -> Settings:
    """Read and validate a config folder; raise ConfigError on the first problem found."""
    cdir = Path(config_dir).resolve()
    if not cdir.is_dir():
        raise ConfigError(str(config_dir), "(folder)", "config folder not found")
    mon: MonitorFile = _load_file(cdir / "monitor.toml", MonitorFile)
    sources_path = (cdir / mon.sources_file).resolve()
    topics_path = (cdir / mon.topics_file).resolve()
    sources: SourcesFile = _load_file(sources_path, SourcesFile)
    topics: TopicsFile = _load_file(topics_path, TopicsFile, expand=False)
    _check_channel_topics(cdir / "monitor.toml", mon, topics)
    return Settings(config_dir=cdir, monitor=mon, sources=sources.sources, topics=topics.topics)


def _check_channel_topics(file: Path, mon: MonitorFile, topics: TopicsFile) -> None:
    known = {t.id for t in topics.topics}
    for i, ch in enumerate(mon.alerts.channels):
        for t in ch.topics:
            if t not in known:
                raise ConfigError(str(file), f"alerts.channels.{i}.topics", f"unknown topic {t!r}")
