"""A job file (TOML): what a job backs up, where to, and what runs around it — read whole and checked before
anything runs, so a typo costs one line naming the key and its line, never half a night's work.

The format is documented in docs/fleet.md, with a commented example in examples/jobs/nightly.toml.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from cbtbackup.errors import CbtError, UsageError
from cbtbackup.jobs.toml_lines import LineIndex
from cbtbackup.jobs.toml_lines import Path as KeyPath
from cbtbackup.model.durations import parse_age, parse_wait
from cbtbackup.model.retention import RetentionPolicy
from cbtbackup.model.sizes import parse_size
from cbtbackup.pipeline.integrity import Sample
from cbtbackup.pipeline.tracking_check import UnchangedSample

T = TypeVar("T")
NotifyWhen = Literal["failure", "success", "always", "never"]
DEFAULT_HOOK_TIMEOUT = 600.0  # a hook that quiesces a database should take seconds; ten minutes is plenty


class JobFileError(UsageError):
    """The job file cannot be run as written."""


@dataclasses.dataclass(frozen=True)
class HookCommand:
    """A hook: a string runs through ``/bin/sh -c`` (pipes, ``&&``), a list runs as it is, without a shell."""

    argv: tuple[str, ...]
    text: str  # as the job file wrote it, for messages

    @classmethod
    def of(cls, value: str | list[str]) -> HookCommand:
        if isinstance(value, str):
            return cls(("/bin/sh", "-c", value), value)
        return cls(tuple(value), " ".join(value))


@dataclasses.dataclass(frozen=True)
class Hooks:
    before: HookCommand | None = None
    after: HookCommand | None = None
    on_failure: HookCommand | None = None
    before_snapshot: HookCommand | None = None  # per source: quiesce, right before the snapshot is taken
    after_snapshot: HookCommand | None = None  # per source: release, right after (also when the take failed)
    timeout: float = DEFAULT_HOOK_TIMEOUT


@dataclasses.dataclass(frozen=True)
class RepositorySettings:
    location: str
    endpoint_url: str | None = None
    key_file: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    wait_lock: float = 0.0
    s3_timeout: float | None = None


@dataclasses.dataclass(frozen=True)
class Retention:
    policy: RetentionPolicy
    prune: bool = True


@dataclasses.dataclass(frozen=True)
class FullPolicy:
    every_backups: int = 0  # a full as every Nth backup of a chain (0: only when the chain has none)
    every_days: float = 0.0  # a full when the chain's last full is older than this (0: never by age)
    # The backups between fulls are differentials against the last full (``incr --since full``), and each
    # full keeps what they need (``--keep-base``).
    differentials: bool = False


@dataclasses.dataclass(frozen=True)
class Webhook:
    url: str
    timeout: float = 10.0
    retries: int = 3
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Email:
    host: str
    to: tuple[str, ...]
    sender: str
    port: int = 587
    starttls: bool = True
    user: str | None = None
    password_file: str | None = None
    ca_file: str | None = None  # a private CA for the server's certificate
    timeout: float = 30.0


@dataclasses.dataclass(frozen=True)
class Notify:
    when: NotifyWhen = "failure"
    fail_on_error: bool = False  # a notification that could not be delivered changes the exit status
    webhook: Webhook | None = None
    email: Email | None = None


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    path: str
    chain: str | None = None
    provider: str = "auto"
    state_dir: str | None = None
    freeze: str | None = None
    diff_storage: str | None = None
    diff_storage_limit: int | None = None
    qmp: str | None = None
    device: str | None = None
    ceph_conf: str | None = None
    ceph_id: str | None = None
    keyring: str | None = None
    # What a CBT incremental re-reads of the blocks reported unchanged, to check the tracking.
    verify_unchanged: UnchangedSample = dataclasses.field(default_factory=UnchangedSample)
    hooks: Hooks = Hooks()


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    file: str
    repository: RepositorySettings
    sources: tuple[SourceSpec, ...]
    retention: Retention | None = None
    verify: Sample | None = None  # read back part of each new backup's chunks
    full: FullPolicy = FullPolicy()
    hooks: Hooks = Hooks()
    notify: Notify = Notify()
    metrics_file: str | None = None

    @property
    def folder(self) -> str:
        """The job file's folder: where relative paths in it point, and where its hooks run."""
        return os.path.dirname(os.path.abspath(self.file))


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", dict: "a table",
               list: "an array"}


def _type_name(value: object) -> str:
    for kind, name in _TYPE_NAMES.items():
        if type(value) is kind:
            return name
    return type(value).__name__


class _Reader:
    """Takes a table's keys one by one; whatever is left at the end is an unknown key."""

    def __init__(self, where: str, lines: LineIndex, table: dict[str, Any], path: KeyPath) -> None:
        self.where, self.lines, self.path = where, lines, path
        self.table = dict(table)

    def error(self, path: KeyPath, message: str) -> JobFileError:
        line = self.lines.line_of(path)
        return JobFileError(f"{self.where}:{line}: {message}" if line else f"{self.where}: {message}")

    def _label(self, key: str) -> str:
        tables = [str(p) for p in self.path if isinstance(p, str)]
        return ".".join([*tables, key])

    def take(self, key: str, kind: type[T], default: T | None = None, required: bool = False) -> T | None:
        if key not in self.table:
            if required:
                raise self.error(self.path, f"'{self._label(key)}' is missing")
            return default
        value = self.table.pop(key)
        ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise self.error((*self.path, key), f"'{self._label(key)}' must be {_TYPE_NAMES[kind]}, "
                                                f"not {_type_name(value)}")
        return value  # type: ignore[no-any-return]

    def convert(self, key: str, parse: Callable[[str], T]) -> T | None:
        """A string that means something (a duration, a size): its parse error names the line."""
        text = self.take(key, str)
        if text is None:
            return None
        try:
            return parse(text)
        except CbtError as e:
            raise self.error((*self.path, key), f"'{self._label(key)}': {e}") from None

    def count(self, key: str, minimum: int = 0) -> int:
        value = self.take(key, int, 0)
        assert value is not None
        if value < minimum:
            raise self.error((*self.path, key), f"'{self._label(key)}' must be at least {minimum}, not {value}")
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self.take(key, list)
        if value is None:
            return None
        if not value or not all(isinstance(v, str) and v for v in value):
            raise self.error((*self.path, key), f"'{self._label(key)}' must be an array of non-empty strings")
        return tuple(value)

    def command(self, key: str) -> HookCommand | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, list):
            strings = self.strings(key)
            return HookCommand.of(list(strings)) if strings else None
        text = self.take(key, str)
        if text is None or not text.strip():
            raise self.error((*self.path, key), f"'{self._label(key)}' is empty")
        return HookCommand.of(text)

    def sub(self, key: str, required: bool = False) -> _Reader | None:
        value = self.take(key, dict, required=required)
        return None if value is None else _Reader(self.where, self.lines, value, (*self.path, key))

    def done(self) -> None:
        for key in self.table:
            raise self.error((*self.path, key), f"unknown key '{self._label(key)}'")


def _hooks(reader: _Reader | None, per_source: bool) -> Hooks:
    if reader is None:
        return Hooks()
    names = ["before", "after", "on_failure"] + (["before_snapshot", "after_snapshot"] if per_source else [])
    commands = {name: reader.command(name) for name in names}
    timeout = reader.convert("timeout", parse_wait)
    if timeout is not None and timeout <= 0:
        raise reader.error((*reader.path, "timeout"), "a hook's timeout must be more than 0")
    reader.done()
    return Hooks(**commands, timeout=timeout or DEFAULT_HOOK_TIMEOUT)


def _repository(reader: _Reader) -> RepositorySettings:
    location = reader.take("location", str, required=True)
    assert location is not None
    settings = RepositorySettings(
        location=location,
        endpoint_url=reader.take("endpoint_url", str),
        key_file=reader.take("key_file", str),
        password_file=reader.take("password_file", str),
        password_command=reader.take("password_command", str),
        wait_lock=reader.convert("wait_lock", parse_wait) or 0.0,
        s3_timeout=reader.take("s3_timeout", float),
    )
    reader.done()
    if sum(x is not None for x in (settings.key_file, settings.password_file, settings.password_command)) > 1:
        raise reader.error(reader.path, "give one of key_file, password_file and password_command")
    return settings


def _retention(reader: _Reader) -> Retention:
    counts = {period: reader.count(f"keep_{period}") for period in
              ("last", "hourly", "daily", "weekly", "monthly", "yearly")}
    within = reader.convert("keep_within", parse_age) or 0.0
    prune = reader.take("prune", bool, True)
    reader.done()
    policy = RetentionPolicy(within=within, **counts)
    if policy.empty:
        raise reader.error(reader.path, "[retention] keeps nothing: give at least one keep_* rule")
    return Retention(policy, bool(prune))


def _verify(reader: _Reader) -> Sample:
    sample = reader.convert("sample", Sample.parse)
    if sample is None:
        raise reader.error(reader.path, "'verify.sample' is missing (a percentage such as 5%, or a size such as 1GiB)")
    reader.done()
    return sample


def _full(reader: _Reader | None) -> FullPolicy:
    if reader is None:
        return FullPolicy()
    every_backups = reader.count("every_backups", 0)
    every_days = reader.take("every_days", float, 0.0) or 0.0
    if every_days < 0:
        raise reader.error((*reader.path, "every_days"), "'full.every_days' cannot be negative")
    differentials = reader.take("differentials", bool, False) or False
    reader.done()
    return FullPolicy(every_backups, every_days, differentials)


def _notify(reader: _Reader | None) -> Notify:
    if reader is None:
        return Notify()
    when = reader.take("on", str, "failure")
    if when not in ("failure", "success", "always", "never"):
        raise reader.error((*reader.path, "on"), f"'notify.on' is failure, success, always or never, not {when!r}")
    fail_on_error = bool(reader.take("fail_on_error", bool, False))
    webhook = email = None
    if (w := reader.sub("webhook")) is not None:
        url = w.take("url", str, required=True)
        assert url is not None
        if not url.startswith(("http://", "https://")):
            raise w.error((*w.path, "url"), f"'notify.webhook.url' must be an http:// or https:// address, not {url!r}")
        headers = w.take("headers", dict, {}) or {}
        if not all(isinstance(v, str) for v in headers.values()):
            raise w.error((*w.path, "headers"), "'notify.webhook.headers' must map names to strings")
        webhook = Webhook(url, timeout=w.convert("timeout", parse_wait) or 10.0, retries=w.count("retries", 0)
                          if "retries" in w.table else 3, headers=headers)
        w.done()
    if (e := reader.sub("email")) is not None:
        host, sender = e.take("host", str, required=True), e.take("from", str, required=True)
        to = e.strings("to")
        if to is None:
            raise e.error(e.path, "'notify.email.to' is missing")
        assert host is not None and sender is not None
        port = e.take("port", int, 587)
        assert port is not None
        if not 0 < port < 65536:
            raise e.error((*e.path, "port"), f"'notify.email.port' must be a TCP port, not {port}")
        email = Email(host, to, sender, port=port, starttls=bool(e.take("starttls", bool, True)),
                      user=e.take("user", str), password_file=e.take("password_file", str),
                      ca_file=e.take("ca_file", str), timeout=e.convert("timeout", parse_wait) or 30.0)
        if email.user and not email.password_file:
            raise e.error(e.path, "'notify.email.user' needs 'password_file'")
        e.done()
    reader.done()
    return Notify(when, fail_on_error, webhook, email)  # type: ignore[arg-type]


def _source(reader: _Reader) -> SourceSpec:
    path = reader.take("path", str, required=True)
    assert path is not None
    if not path:
        raise reader.error((*reader.path, "path"), "'sources.path' is empty")
    spec = SourceSpec(
        path=path,
        chain=reader.take("chain", str),
        provider=reader.take("provider", str, "auto") or "auto",
        state_dir=reader.take("state_dir", str),
        freeze=reader.take("freeze", str),
        diff_storage=reader.take("diff_storage", str),
        diff_storage_limit=reader.convert("diff_storage_limit", parse_size),
        qmp=reader.take("qmp", str),
        device=reader.take("device", str),
        ceph_conf=reader.take("ceph_conf", str),
        ceph_id=reader.take("ceph_id", str),
        keyring=reader.take("keyring", str),
        verify_unchanged=reader.convert("verify_unchanged", UnchangedSample.parse) or UnchangedSample(),
        hooks=_hooks(reader.sub("hooks"), per_source=True),
    )
    from cbtbackup.engine.providers import PROVIDERS  # the engine's list, checked here so nothing runs first

    if spec.provider not in PROVIDERS:
        raise reader.error((*reader.path, "provider"),
                           f"'sources.provider' is one of {', '.join(PROVIDERS)}, not {spec.provider!r}")
    reader.done()
    return spec


_TOP_LEVEL = {"job", "repository", "sources", "retention", "verify", "full", "hooks", "notify", "metrics"}


def parse_job(text: str, where: str, default_name: str) -> Job:
    """The job a file's text describes; :class:`JobFileError` naming the line of the first problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        message = str(e)
        line = ""
        if "(at line " in message:
            line = message.rsplit("(at line ", 1)[1].split(",", 1)[0].rstrip(")")
            message = message.rsplit(" (at line ", 1)[0]
        raise JobFileError(f"{where}:{line}: not valid TOML: {message}" if line else
                           f"{where}: not valid TOML: {message}") from None
    lines = LineIndex(text)
    top = _Reader(where, lines, data, ())
    for key in data:  # a misspelt table first: what is under it would only confuse the message
        if key not in _TOP_LEVEL:
            raise top.error((key,), f"unknown key '{key}'")
    name = top.take("job", str, default_name) or default_name
    repository_table = top.sub("repository")
    if repository_table is None:
        raise JobFileError(f"{where}: [repository] is missing: say where the backups go (location = ...)")
    repository = _repository(repository_table)
    raw_sources = top.take("sources", list)
    if not raw_sources:
        raise top.error((), "no [[sources]]: a job backs up at least one source")
    sources = []
    for i, raw in enumerate(raw_sources):
        if not isinstance(raw, dict):
            raise top.error(("sources",), "'sources' must be an array of tables ([[sources]])")
        sources.append(_source(_Reader(where, lines, raw, ("sources", i))))
    retention = _retention(r) if (r := top.sub("retention")) is not None else None
    verify = _verify(v) if (v := top.sub("verify")) is not None else None
    job = Job(
        name=name, file=where, repository=repository, sources=tuple(sources), retention=retention,
        verify=verify, full=_full(top.sub("full")), hooks=_hooks(top.sub("hooks"), per_source=False),
        notify=_notify(top.sub("notify")),
        metrics_file=None,
    )
    if (m := top.sub("metrics")) is not None:
        job = dataclasses.replace(job, metrics_file=m.take("file", str, required=True))
        m.done()
    top.done()
    chains = [s.chain for s in sources if s.chain]
    if len(chains) != len(set(chains)):
        raise JobFileError(f"{where}: two sources name the same chain; each source needs its own")
    return job


def _beside(base: str, path: str | None) -> str | None:
    if path is None or path.startswith(("s3://", "rbd:")) or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(base, path))


def resolve_paths(job: Job, base: str) -> Job:
    """Relative paths in a job file mean beside the job file, wherever it is run from (systemd runs in /)."""
    r = job.repository
    repository = dataclasses.replace(r, location=_beside(base, r.location) or r.location,
                                     key_file=_beside(base, r.key_file),
                                     password_file=_beside(base, r.password_file))
    sources = tuple(dataclasses.replace(s, path=_beside(base, s.path) or s.path, state_dir=_beside(base, s.state_dir),
                                        diff_storage=_beside(base, s.diff_storage)) for s in job.sources)
    notify = job.notify
    if notify.email is not None:
        notify = dataclasses.replace(notify, email=dataclasses.replace(
            notify.email, password_file=_beside(base, notify.email.password_file),
            ca_file=_beside(base, notify.email.ca_file)))
    return dataclasses.replace(job, repository=repository, sources=sources, notify=notify,
                               metrics_file=_beside(base, job.metrics_file))


def load_job(path: str) -> Job:
    """Read and check the job file at ``path``; relative paths in it are taken from the file's folder."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFileError(f"no job file {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JobFileError(f"cannot read the job file {path}: {e}") from None
    job = parse_job(text, path, os.path.splitext(os.path.basename(path))[0])
    return resolve_paths(job, os.path.dirname(os.path.abspath(path)))
