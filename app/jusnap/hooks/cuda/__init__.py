"""Snapshots of kernels that hold CUDA memory (see docs/gpu.md).

One job per module, so each can be read, replaced and tested on its own:

* :mod:`.driver` -- the binding of the CUDA driver's ``cuCheckpointProcess*`` calls (ctypes);
* :mod:`.procfs` -- which processes hold ``/dev/nvidia*`` (and which GPUs, by UUID), MIG and
  MPS, GPU models and driver version, read from ``/proc`` and ``/dev``;
* :mod:`.nvml` -- free memory per GPU (NVML through ctypes), for placement;
* :mod:`.placement` -- which GPU a restored or forked kernel's state goes onto (pure logic);
* :mod:`.hook` -- :class:`CudaHook`: the policy (refusals, automatic snapshots, freeing
  PyTorch's cache) and the lock -> checkpoint -> dump -> restore -> unlock sequence.

Its settings are the ``jusnap.gpu`` section of the config (:class:`jusnap.config.GpuSettings`).
Everything is re-exported here because callers (the daemon, the GPU tests, older code) import
from ``jusnap.hooks.cuda``; ``CudaSettings`` is the name the settings had before they moved
into the config.
"""

from __future__ import annotations

from jusnap.config import GpuSettings

from . import driver, hook, nvml, placement, procfs
from .driver import *  # noqa: F403
from .hook import *  # noqa: F403
from .nvml import *  # noqa: F403
from .placement import *  # noqa: F403
from .procfs import *  # noqa: F403

CudaSettings = GpuSettings

__all__ = [
    *driver.__all__,
    *procfs.__all__,
    *nvml.__all__,
    *placement.__all__,
    *hook.__all__,
    "CudaSettings",
    "GpuSettings",
]
