"""What the machine and a process say about NVIDIA GPUs, read from ``/proc`` and ``/dev``.

Deciding whether a kernel uses the GPU, and whether the driver could checkpoint it (MIG, MPS),
must be cheap and must not open a device or load a library: the engine asks for every kernel it
snapshots, GPU or not. Everything here reads files under an injectable ``proc_root`` /
``dev_root``, so it is tested against a fake tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GpuInfo", "GpuSystem"]

_DRIVER_VERSION_RE = re.compile(r"NVRM version:.*?\s(\d+\.\d+(?:\.\d+)?)\s")
_MODEL_RE = re.compile(r"^Model:\s*(.+?)\s*$", re.MULTILINE)
_UUID_RE = re.compile(r"^GPU UUID:\s*(\S+)\s*$", re.MULTILINE)
_MINOR_RE = re.compile(r"^Device Minor:\s*(\d+)\s*$", re.MULTILINE)
#: A GPU's own device file; not nvidiactl, nvidia-uvm, nvidia-modeset or nvidia-caps/*.
_GPU_DEVICE_RE = re.compile(r"/dev/nvidia(\d+)")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as ``/proc/driver/nvidia/gpus/<pci>/information`` describes it."""

    pci: str
    model: str | None
    uuid: str | None
    minor: int | None


class GpuSystem:
    """What the machine says about its GPUs, read from ``/proc`` and ``/dev`` only.

    Reading files instead of calling NVML keeps these checks cheap, free of extra libraries,
    and testable against a fake tree (``proc_root`` / ``dev_root``).
    """

    def __init__(self, proc_root: Path | str = "/proc", dev_root: Path | str = "/dev") -> None:
        self.proc = Path(proc_root)
        self.dev = Path(dev_root)

    def device_present(self) -> bool:
        return (self.dev / "nvidiactl").exists()

    def gpus(self) -> list[GpuInfo]:
        """Every GPU the driver publishes, in PCI order; a field it does not print is None."""
        found = []
        for info in sorted((self.proc / "driver/nvidia/gpus").glob("*/information")):
            text = _read_text(info)
            model, uuid, minor = (r.search(text) for r in (_MODEL_RE, _UUID_RE, _MINOR_RE))
            found.append(
                GpuInfo(
                    pci=info.parent.name,
                    model=model.group(1) if model else None,
                    uuid=uuid.group(1) if uuid else None,
                    minor=int(minor.group(1)) if minor else None,
                )
            )
        return found

    def gpu_models(self) -> list[str]:
        return [g.model for g in self.gpus() if g.model]

    def driver_version(self) -> str | None:
        match = _DRIVER_VERSION_RE.search(_read_text(self.proc / "driver/nvidia/version"))
        return match.group(1) if match else None

    def mig_access_minors(self) -> set[int]:
        """Device minors of ``/dev/nvidia-caps/nvidia-capN`` that grant a MIG instance.

        Every CUDA process opens some ``nvidia-caps`` files (the MIG *config* and *monitor*
        capabilities, seen on a non-MIG H200), so only the minors the driver publishes for GPU
        and compute instances (``gi*/access``, ``gi*/ci*/access``) mean MIG is in use.
        """
        minors = set()
        caps = self.proc / "driver/nvidia/capabilities"
        for access in [*caps.glob("gpu*/mig/gi*/access"), *caps.glob("gpu*/mig/gi*/ci*/access")]:
            match = re.search(r"DeviceFileMinor:\s*(\d+)", _read_text(access))
            if match:
                minors.add(int(match.group(1)))
        return minors

    def mps_server_running(self) -> bool:
        for comm in self.proc.glob("[0-9]*/comm"):
            if _read_text(comm).strip() == "nvidia-cuda-mps-server":
                return True
        return False

    # --- per process ----------------------------------------------------------------------

    def fd_targets(self, pid: int) -> list[str]:
        targets = []
        fd_dir = self.proc / str(pid) / "fd"
        try:
            entries = list(fd_dir.iterdir())
        except OSError:
            return []
        for entry in entries:
            try:
                targets.append(str(entry.readlink()))
            except OSError:
                continue
        return targets

    def mapped_paths(self, pid: int) -> list[str]:
        paths = []
        for line in _read_text(self.proc / str(pid) / "maps").splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6:
                paths.append(parts[5])
        return paths

    def nvidia_files(self, pid: int) -> set[str]:
        """Device files of the NVIDIA driver that ``pid`` holds open or mapped."""
        found = {p for p in self.fd_targets(pid) if p.startswith("/dev/nvidia")}
        found.update(p for p in self.mapped_paths(pid) if p.startswith("/dev/nvidia"))
        return found

    def gpu_uuids(self, pid: int) -> list[str]:
        """UUIDs of the GPUs ``pid`` has open, in device-minor order.

        A CUDA context keeps ``/dev/nvidiaN`` open for each GPU it uses (N is the device
        minor); the driver's ``information`` file maps that minor to the GPU's UUID. Read
        before the checkpoint: it closes those files. A minor no GPU claims is left out.
        """
        minors = set()
        for path in self.nvidia_files(pid):
            match = _GPU_DEVICE_RE.fullmatch(path)
            if match:
                minors.add(int(match.group(1)))
        by_minor = {g.minor: g.uuid for g in self.gpus() if g.minor is not None and g.uuid}
        return [by_minor[m] for m in sorted(minors) if m in by_minor]

    def uses_mig(self, pid: int) -> bool:
        """``pid`` holds the access capability of a MIG GPU or compute instance."""
        minors = self.mig_access_minors()
        if not minors:
            return False
        for path in self.nvidia_files(pid):
            match = re.fullmatch(r"/dev/nvidia-caps/nvidia-cap(\d+)", path)
            if match and int(match.group(1)) in minors:
                return True
        return False

    def uses_mps(self, pid: int) -> bool:
        """``pid`` talks to an MPS server (a unix socket under the MPS pipe directory)."""
        inodes = set()
        for target in self.fd_targets(pid):
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
        if not inodes:
            return False
        for line in _read_text(self.proc / str(pid) / "net/unix").splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 8 and parts[6] in inodes and "nvidia-mps" in parts[7]:
                return True
        return False

    def rss_bytes(self, pid: int) -> int | None:
        for line in _read_text(self.proc / str(pid) / "status").splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
