"""Settings: ``conf.yml`` plus ``--dotted.key`` flags, validated once at start-up.

The original jusnap took its settings from a Viper-style ``conf.yml`` and flags such as
``--jusnap.criu.ghost_limit``; users' files and scripts keep working because every original key
means what it meant (durations like ``5s``, the ghost limit in MB -- now really MB). Everything
is checked here, so a typo or a bad value stops the daemon with one line instead of failing a
snapshot hours later.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import grp
import os
import pwd
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, get_type_hints

import yaml

from .autosnap import check_cooldown
from .errors import ConfigError, InvalidRequest

DEFAULT_CONFIG_PATH = "/etc/jusnap/conf.yml"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*\Z")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+-]*\Z")  # \Z: no trailing newline
#: ``timeoutMs`` of ``CUcheckpointLockArgs`` is a C ``unsigned int``: anything larger would wrap.
_MAX_LOCK_TIMEOUT_MS = 2**32 - 1


class Duration(float):
    """Seconds, written as a number or a Go-style string (``500ms``, ``5s``, ``2m``)."""


@dataclass
class GracefulSettings:
    # How long a kernel gets to exit after SIGTERM on shutdown (then SIGKILL), and gunicorn's
    # graceful stop of in-flight requests.
    shutdown_timeout: Duration = Duration(10)


@dataclass
class CriuSettings:
    # CRIU as built by the ``criu`` Ansible role. It carries no file capabilities: the daemon
    # hands CRIU the capabilities it needs for one run (see docs/security.md).
    binary: str = "/usr/local/sbin/criu"
    # Unlinked-but-open files up to this many MB are stored in the image (original key; it was
    # silently treated as bytes by the Go daemon).
    ghost_limit: int = 64
    # "auto": CRIU's --unprivileged mode whenever the kernel is not root (the only mode that
    # works without CAP_SYS_RESOURCE; CRIU runs as the kernel's uid with ambient capabilities).
    unprivileged: str = "auto"
    # New: longest a `criu dump` may take before it is killed (the kernel keeps running).
    dump_timeout: Duration = Duration(120)
    # New: longest a `criu restore` may take (it can hang on an internal BUG); then rollback.
    restore_timeout: Duration = Duration(120)
    # New: dump and restore file locks (a sqlite transaction holding a lock needs it).
    file_locks: bool = True


@dataclass
class HttpSettings:
    # Loopback address for the API's TCP listener (nginx and tools); empty: Unix socket only.
    host: str = "127.0.0.1"
    # TCP port of the API (original key; the original listened on all interfaces, Jusnap on
    # loopback only).
    port: str = "8000"
    # New: the Unix socket local callers use (CLI, provisioner, kernels); callers are identified
    # by their uid.
    socket: str = "/run/jusnap/jusnap.sock"
    # Original key: idle keep-alive time of a client connection.
    read_timeout: Duration = Duration(5)
    # Original key, accepted for compatibility; requests run until their operation's own
    # timeout (criu dump/restore timeouts) instead.
    write_timeout: Duration = Duration(5)
    # New: concurrent requests the daemon serves (one kernel operation at a time per kernel).
    workers_threads: int = 8


@dataclass
class IpythonSettings:
    # Extra arguments for the default kernel command (`python -m ipykernel_launcher -f ...`).
    args: str = ""
    # Minimum time between automatic snapshots of a kernel (manual ones always run).
    cooldown: Duration = Duration(5)
    # Keep IPython's history in a per-kernel database saved with every snapshot (off: history
    # lives in the kernel's memory, which is snapshotted anyway).
    history_enabled: bool = False
    # The user's IPython history; each kernel's own history database starts as a copy of it.
    history_file: str = "~/.ipython/profile_default/history.sqlite"
    # Python that runs the default kernel command.
    python_interpreter: str = "python3"
    # Where `jusnap start` writes a kernel's connection file (for `jupyter console --existing`).
    runtime_path: str = "~/.local/share/jupyter/runtime/"
    # New: whether kernels take automatic snapshots after cells until told otherwise.
    auto_snapshot: bool = True
    # New: how long a restored kernel may take to answer on its channels.
    handshake_timeout: Duration = Duration(20)
    # New: MB of a kernel's stdout/stderr kept for `jusnap logs` (plus one rotated copy).
    log_limit: int = 1


@dataclass
class JupyterSettings:
    # Extra arguments for the Jupyter server (used by the supervisor template of the appliance).
    args: str = ""
    # Port of the Jupyter server on loopback (nginx proxies to it).
    port: int = 8888
    # New: the Jupyter server that vouches for browser requests reaching the daemon over TCP
    # (``GET {url}api/me`` with the browser's cookie or token). Empty: http://127.0.0.1:<port>/.
    url: str = ""
    # New: whom such a browser request acts as: the user the Jupyter server runs as. Empty: the
    # kernel user (in a Jusnap install Jupyter and its kernels run as the same ``jusnap`` user).
    user: str = ""
    # New: how long a browser's credentials, once vouched for, are trusted before asking again.
    auth_cache: Duration = Duration(10)
    # New: whether browser requests over TCP are accepted at all.
    browser_auth: bool = True


@dataclass
class OsSettings:
    # Who kernels run as; names or numbers. Empty means the unprivileged ``jusnap`` user.
    uid: str = ""
    # Group of kernels and the files created for them; empty: the kernel user's primary group.
    gid: str = ""


@dataclass
class StoreSettings:
    """The snapshot store: compression, retention, garbage collection, lazy restore."""

    # zstd level for stored pages (1: 250-700 MB/s per core, off the kernel's freeze).
    compression_level: int = 1
    # Threads that compress when storing and decompress/verify when restoring.
    threads: int = 2
    # Per notebook (or kernel without one): automatic snapshots kept, newest first; manual and
    # labelled snapshots are never removed by retention. 0 keeps all.
    keep_auto: int = 50
    # Space one user's snapshots may take on disk, in MB: the user's quota (oldest automatic
    # ones go first; manual and labelled ones never; a snapshot that still does not fit is
    # not kept and fails with "quota_exceeded"). 0: no cap.
    max_user_mb: int = 0
    # How long the safety copies taken before each restore are kept.
    pre_restore_ttl: Duration = Duration(24 * 3600)
    # Run garbage collection of unreferenced chunks after retention removed snapshots.
    gc_after_retention: bool = True
    # Restore with CRIU's lazy pages ("auto": when the image holds at least lazy_threshold_mb
    # and CRIU can serve them: privileged, or --unprivileged with lazy_unprivileged below).
    lazy_pages: str = "auto"
    # Image size from which "auto" restores lazily, in MB.
    lazy_threshold_mb: int = 1024
    # New: lazy restore for kernels CRIU restores --unprivileged (every non-root kernel). Needs
    # the criu role's userfaultfd patch (checked once with `criu check --feature uffd-noncoop`;
    # without it restores stay eager). Off by default.
    lazy_unprivileged: bool = False
    # Snapshots per kernel also kept as plain images (the hot tier), the ones taken or restored
    # last: restoring one skips rebuilding it from the store, at the cost of its full size on
    # disk. 0 keeps none (a restore's safety copy still stays until it is stored).
    hot_snapshots: int = 2
    # A snapshot is recorded (listed, restorable) as soon as its images are durable and checked
    # in the hot tier, and stored in the content-addressed store in the background; false: the
    # snapshot call returns once it is stored (always so with a per-user quota, max_user_mb).
    background_commit: bool = True
    # New: while CRIU writes a snapshot that is made durable before it is listed, start writing
    # its images to disk (sync_file_range), so the fsync after the dump finds little left: the
    # snapshot is listed ~0.3 s per GiB sooner, but the writeback competes with CRIU, which
    # held a quiet 1 GiB kernel frozen ~0.1 s longer on the 2-core VM (docs/benchmarks.md).
    # Off by default: the freeze is what the user waits for.
    early_writeback: bool = False


@dataclass
class GpuSettings:
    """GPU kernels: how the CUDA hook checkpoints them around CRIU (docs/gpu.md).

    A GPU snapshot moves every byte the kernel holds on the GPU through host memory into the
    image, so it is slower and larger than a CPU one: these keys bound the wait for running CUDA
    calls and let automatic snapshots of GPU kernels be rarer than those of CPU kernels.
    """

    # How long to wait, in ms, for the kernel's CUDA calls in progress before a snapshot gives
    # up (the kernel keeps running); 0 waits forever.
    lock_timeout_ms: int = 10_000
    # Run torch.cuda.empty_cache() in the kernel before each snapshot (only if the notebook
    # already uses torch on CUDA): PyTorch's cached-but-free GPU blocks are not saved.
    free_torch_cache: bool = False
    # Whether GPU kernels take automatic after-cell snapshots at all (manual ones always run).
    auto_snapshot: bool = True
    # Minimum time between automatic snapshots of a GPU kernel; the longer of this and the
    # kernel's own cooldown applies.
    auto_cooldown_seconds: Duration = Duration(60)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> GpuSettings:
        """The section from a raw ``gpu:`` mapping, checked like conf.yml.

        Kept because the CUDA hook took its settings as an untyped mapping before this section
        existed; callers that still pass one get the same keys and the same errors.
        """
        return cast(GpuSettings, section_from_mapping("jusnap.gpu", data))


@dataclass
class KernelsSettings:
    # New: run each kernel as PID 1 of its own PID + mount namespace (a minimal mount tree:
    # /, /dev and its own /proc; / nosuid; no_new_privs), so that a restore never needs the
    # snapshot's PID to be free. "auto": when the daemon runs as root, and falls back to a
    # plain launch (logged) for a kernel whose working directory, home, interpreter or the
    # state directory lies on another mount than / (the namespace does not see it); "on":
    # the same, but such a launch fails instead; "off": plain kernels (docs/security.md).
    namespaces: str = "auto"


@dataclass
class JusnapSettings:
    # New: registry, snapshot store, kernels' private files and scratch space (root, 0711).
    state_dir: str = "/var/lib/jusnap"
    # debug, info, warning, error.
    log_level: str = "info"
    criu: CriuSettings = field(default_factory=CriuSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    ipython: IpythonSettings = field(default_factory=IpythonSettings)
    jupyter: JupyterSettings = field(default_factory=JupyterSettings)
    os: OsSettings = field(default_factory=OsSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    gpu: GpuSettings = field(default_factory=GpuSettings)
    kernels: KernelsSettings = field(default_factory=KernelsSettings)


@dataclass
class Settings:
    graceful: GracefulSettings = field(default_factory=GracefulSettings)
    jusnap: JusnapSettings = field(default_factory=JusnapSettings)

    # ---- derived values, computed once -------------------------------------------------
    @property
    def state_dir(self) -> Path:
        return Path(self.jusnap.state_dir)

    @property
    def kernel_uid(self) -> int:
        return resolve_uid(self.jusnap.os.uid or "jusnap")

    @property
    def kernel_gid(self) -> int:
        if self.jusnap.os.gid:
            return resolve_gid(self.jusnap.os.gid)
        return pwd.getpwuid(self.kernel_uid).pw_gid

    @property
    def jupyter_url(self) -> str:
        url = self.jusnap.jupyter.url or f"http://127.0.0.1:{self.jusnap.jupyter.port}/"
        return url if url.endswith("/") else url + "/"

    @property
    def jupyter_uid(self) -> int:
        user = self.jusnap.jupyter.user
        return resolve_uid(user) if user else self.kernel_uid

    @property
    def log_limit_bytes(self) -> int:
        return self.jusnap.ipython.log_limit * 1024 * 1024

    @property
    def ghost_limit_bytes(self) -> int:
        return self.jusnap.criu.ghost_limit * 1024 * 1024

    def kernel_argv(self) -> list[str]:
        ip = self.jusnap.ipython
        return [
            ip.python_interpreter,
            "-m",
            "ipykernel_launcher",
            "-f",
            "{connection_file}",
            *shlex.split(ip.args),
        ]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_uid(value: str | int) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return pwd.getpwnam(str(value)).pw_uid
    except KeyError:
        raise ConfigError(f"jusnap.os.uid: no such user {value!r}") from None


def resolve_gid(value: str | int) -> int:
    try:
        return int(value)
    except ValueError:
        pass
    try:
        return grp.getgrnam(str(value)).gr_gid
    except KeyError:
        raise ConfigError(f"jusnap.os.gid: no such group {value!r}") from None


# ---- generic loading of nested dataclasses -------------------------------------------------


def _leaves(cls: type, prefix: str = "") -> dict[str, type]:
    """Every settable dotted key of a settings dataclass and its type."""
    out: dict[str, type] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        typ = hints[f.name]
        if dataclasses.is_dataclass(typ):
            out.update(_leaves(typ, key + "."))  # type: ignore[arg-type]
        else:
            out[key] = typ
    return out


LEAVES = _leaves(Settings)
#: Dotted keys of the sections (``jusnap``, ``jusnap.criu``, ...): mappings, not values.
SECTIONS = {key.rsplit(".", n)[0] for key in LEAVES for n in range(1, key.count(".") + 1)}


def _coerce(key: str, typ: Any, value: Any) -> Any:
    if typ is Duration:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a duration like 5s, got {value!r}")
        if isinstance(value, int | float):
            seconds = float(value)
        else:
            m = _DURATION.match(str(value))
            if not m:
                raise ConfigError(f"{key}: expected a duration like 5s or 500ms, got {value!r}")
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        if seconds < 0:
            raise ConfigError(f"{key}: must not be negative")
        return Duration(seconds)
    if typ is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key}: expected a whole number, got {value!r}") from None
    if typ is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{key}: expected a string, got {type(value).__name__}")
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported setting type")  # pragma: no cover


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping")
    for k, v in data.items():
        key = f"{prefix}{k}"
        if key in SECTIONS:
            if v is not None:  # None: every key commented out, the section's defaults
                out.update(_flatten(v, key + "."))  # one line if it is not a mapping
        elif isinstance(v, dict) and key not in LEAVES:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _apply(settings: Settings, flat: dict[str, Any], source: str) -> None:
    for key, value in flat.items():
        if key not in LEAVES:
            # A typo of a key in the same section is worth naming; anything else is noise.
            section = key.rpartition(".")[0]
            same = [k for k in LEAVES if k.rpartition(".")[0] == section]
            close = difflib.get_close_matches(key, same, n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{source}: unknown setting {key!r}{hint}")
        obj: Any = settings
        *parents, leaf = key.split(".")
        for p in parents:
            obj = getattr(obj, p)
        setattr(obj, leaf, _coerce(key, LEAVES[key], value))


def _validate(s: Settings) -> None:
    j = s.jusnap
    if j.log_level.lower() not in ("debug", "info", "warning", "warn", "error", "critical"):
        raise ConfigError(f"jusnap.log_level: unknown level {j.log_level!r}")
    if j.criu.unprivileged not in ("auto", "true", "false"):
        raise ConfigError("jusnap.criu.unprivileged: expected auto, true or false")
    if j.kernels.namespaces not in ("auto", "on", "off"):
        raise ConfigError("jusnap.kernels.namespaces: expected auto, on or off")
    st = j.store
    if st.lazy_pages not in ("auto", "true", "false"):
        raise ConfigError("jusnap.store.lazy_pages: expected auto, true or false")
    if not 1 <= st.compression_level <= 19:
        raise ConfigError("jusnap.store.compression_level: expected 1 to 19")
    if not 1 <= st.threads <= 64:
        raise ConfigError("jusnap.store.threads: expected 1 to 64")
    for key in ("keep_auto", "max_user_mb", "lazy_threshold_mb"):
        if getattr(st, key) < 0:
            raise ConfigError(f"jusnap.store.{key}: must not be negative")
    if j.ipython.log_limit < 1:
        raise ConfigError("jusnap.ipython.log_limit: must be at least 1 (MB)")
    if j.criu.ghost_limit < 0:
        raise ConfigError("jusnap.criu.ghost_limit: must not be negative (MB)")
    try:
        check_cooldown(j.ipython.cooldown)
    except InvalidRequest as exc:
        raise ConfigError(f"jusnap.ipython.{exc.message}") from None
    for key, path in (("jusnap.state_dir", j.state_dir), ("jusnap.criu.binary", j.criu.binary)):
        # These end up in CRIU's --action-script line and file modes: keep them boring.
        if not _SAFE_PATH.match(path):
            raise ConfigError(f"{key}: must be an absolute path of plain characters, got {path!r}")
    if not j.http.port.isdigit() or not 0 < int(j.http.port) < 65536:
        raise ConfigError(f"jusnap.http.port: not a port number: {j.http.port!r}")
    if j.http.host not in ("127.0.0.1", "::1", "localhost", ""):
        raise ConfigError(
            "jusnap.http.host: the API binds to loopback only (nginx faces the network)"
        )
    if j.jupyter.url and not re.match(r"^https?://[^/\s]+(/\S*)?\Z", j.jupyter.url):
        raise ConfigError(f"jusnap.jupyter.url: expected an http(s) URL, got {j.jupyter.url!r}")
    try:
        shlex.split(j.ipython.args)
        shlex.split(j.jupyter.args)
    except ValueError as exc:
        raise ConfigError(f"jusnap.ipython.args: {exc}") from None
    if j.gpu.lock_timeout_ms < 0:
        raise ConfigError("jusnap.gpu.lock_timeout_ms: must not be negative (0 waits forever)")
    if j.gpu.lock_timeout_ms > _MAX_LOCK_TIMEOUT_MS:
        raise ConfigError(
            f"jusnap.gpu.lock_timeout_ms: at most {_MAX_LOCK_TIMEOUT_MS} (the driver's limit)"
        )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Defaults, then the YAML file (if any), then flag overrides; validated."""
    s = Settings()
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}:{where} is not valid YAML") from None
        _apply(s, _flatten(data), str(p))
    if overrides:
        _apply(s, overrides, "command line")
    _validate(s)
    return s


def section_from_mapping(key: str, data: Mapping[str, Any] | None) -> Any:
    """One section (``jusnap.gpu``...) from a raw mapping, as if it stood there in conf.yml.

    Goes through the same coercion and validation as the file, so a caller holding a plain
    mapping cannot get values the daemon would have refused at start-up.
    """
    s = Settings()
    raw = dict(data) if isinstance(data, Mapping) else ({} if data is None else data)
    _apply(s, _flatten(raw, key + "."), key)
    _validate(s)
    return value_at(s, key)


def value_at(settings: Settings, key: str) -> Any:
    """The setting or section at a dotted key (``jusnap.gpu.lock_timeout_ms``)."""
    obj: Any = settings
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Register ``--config`` and one ``--dotted.key`` flag per setting (original names)."""
    parser.add_argument(
        "--config", metavar="FILE", help=f"YAML config (default {DEFAULT_CONFIG_PATH} if present)"
    )
    group = parser.add_argument_group("settings (each overrides conf.yml)")
    for key in LEAVES:
        group.add_argument(f"--{key}", dest=f"cfg:{key}", metavar="VALUE", default=None)


def settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
    path = args.config
    if path is None and Path(DEFAULT_CONFIG_PATH).exists():
        path = DEFAULT_CONFIG_PATH
    return load_settings(path, overrides)
