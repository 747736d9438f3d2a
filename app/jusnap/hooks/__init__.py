"""Extension points around ``criu dump`` and ``criu restore``.

Some process state cannot be dumped by CRIU alone (CUDA contexts, for one): a hook moves that
state somewhere CRIU can see it before the dump and puts it back afterwards. The engine asks
every registered hook whether it applies to a kernel and wraps the CRIU call in the hooks that
do, so device-specific code never leaks into the snapshot sequence itself.

Contract (the engine relies on every line):

* ``detect(pid)`` is cheap and side-effect free.
* ``preflight_dump`` / ``preflight_restore`` raise :class:`jusnap.errors.Refused` *before*
  anything touches the kernel when the hook cannot do its job (driver too old, wrong device...).
  ``preflight_restore(meta, beside=True)`` is asked for a fork: the restored process will run
  beside everything running now, so device room can be judged from what is free now (a
  restore in place frees the replaced kernel's devices only later).
* ``around_dump`` is a context manager: on entry it prepares the kernel for CRIU and yields a
  JSON-able dict that is stored in the snapshot metadata under the hook's ``name``; on exit,
  whether the dump succeeded or raised, the kernel must be running normally again.
* ``prepare_code`` may return Python source the kernel runs silently (only when idle) just
  before the dump, e.g. to release cached device memory and shrink the image.
* ``auto_policy`` may override automatic snapshots of kernels the hook applies to (heavier
  kernels deserve a longer cooldown, or none at all).
* ``after_restore`` runs once ``criu restore`` has brought the process back; it receives the
  metadata that ``around_dump`` yielded. If it raises, the engine kills the restored process
  and rolls back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AutoPolicy:
    enabled: bool
    min_cooldown: float


class CheckpointHook(ABC):
    name: str = "hook"

    @abstractmethod
    def detect(self, pid: int) -> bool:
        """Whether this kernel holds state this hook must handle."""

    def preflight_dump(self, pid: int) -> None:  # noqa: B027 - optional
        """Raise Refused if a dump of ``pid`` cannot be done by this hook."""

    @abstractmethod
    def around_dump(self, pid: int) -> AbstractContextManager[dict[str, Any]]:
        """Prepare ``pid`` for CRIU; always leave it running on exit."""

    def preflight_restore(  # noqa: B027 - optional
        self, meta: dict[str, Any], beside: bool = False
    ) -> None:
        """Raise Refused if a snapshot with this hook metadata cannot be restored here
        (``beside``: as a new process next to those running now, i.e. a fork)."""

    def prepare_code(self, pid: int) -> str | None:
        """Source to run silently in the idle kernel before a dump, or None."""
        return None

    def auto_policy(self, pid: int) -> AutoPolicy | None:
        """Overrides for automatic snapshots of this kernel, or None to keep the defaults."""
        return None

    def after_restore(self, pid: int, meta: dict[str, Any]) -> None:  # noqa: B027 - optional
        """Bring the restored ``pid`` fully back to life."""


class HookSet:
    """The hooks registered with an engine, applied in order (and unwound in reverse)."""

    def __init__(self, hooks: Sequence[CheckpointHook] = ()) -> None:
        self.hooks = list(hooks)

    def for_pid(self, pid: int) -> list[CheckpointHook]:
        return [h for h in self.hooks if h.detect(pid)]

    def for_meta(self, meta: dict[str, Any]) -> list[CheckpointHook]:
        return [h for h in self.hooks if h.name in meta]

    @contextmanager
    def around_dump(self, pid: int, active: list[CheckpointHook]) -> Iterator[dict[str, Any]]:
        for hook in active:
            hook.preflight_dump(pid)
        collected: dict[str, Any] = {}
        with ExitStack() as stack:
            for hook in active:
                collected[hook.name] = stack.enter_context(hook.around_dump(pid))
            yield collected

    def prepare_code(self, active: list[CheckpointHook], pid: int) -> list[str]:
        return [code for h in active if (code := h.prepare_code(pid))]

    def auto_policy(self, active: list[CheckpointHook], pid: int) -> AutoPolicy | None:
        """The strictest policy of the active hooks."""
        policies = [p for h in active if (p := h.auto_policy(pid))]
        if not policies:
            return None
        return AutoPolicy(all(p.enabled for p in policies), max(p.min_cooldown for p in policies))

    def preflight_restore(self, meta: dict[str, Any], beside: bool = False) -> None:
        for hook in self.for_meta(meta):
            if beside:
                hook.preflight_restore(meta[hook.name], beside=True)
            else:  # a hook written before ``beside`` existed still restores in place
                hook.preflight_restore(meta[hook.name])

    def after_restore(self, pid: int, meta: dict[str, Any]) -> None:
        for hook in self.for_meta(meta):
            hook.after_restore(pid, meta[hook.name])
