"""Facts about the host that a measurement depends on: CPUs, physical cores, load, the memory this process may use.

No torch. Every reader takes the file-system root (default '/'), so the tests give it a fake /proc and /sys.
"""

from __future__ import annotations

import os
import platform
import resource
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Load:
    """The 1-, 5- and 15-minute load averages (runnable threads, ours included) against the CPUs we may use."""

    averages: tuple[float, float, float]
    cpus: int

    def busy(self, threads: int) -> bool:
        """True when the CPUs the others keep busy leave fewer than `threads` idle: the 1-minute average counts
        this process (about one runnable thread while it starts up) among the load."""
        others = max(0.0, self.averages[0] - 1.0)
        return others + threads > self.cpus + 0.5


def cpus() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def load() -> Load:
    try:
        averages = os.getloadavg()
    except (AttributeError, OSError):
        averages = (0.0, 0.0, 0.0)
    return Load((round(averages[0], 2), round(averages[1], 2), round(averages[2], 2)), cpus())


def physical_cores(root: str = "/") -> int:
    """Physical cores among the CPUs we may use: distinct (physical id, core id) pairs of /proc/cpuinfo for the
    processors in our affinity mask; the logical count where cpuinfo says nothing (no SMT information)."""
    allowed = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores: set[tuple[str, str]] = set()
    try:
        text = (Path(root) / "proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return cpus()
    for block in text.split("\n\n"):
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "processor" not in fields or "core id" not in fields:
            continue
        if allowed is not None and int(fields["processor"]) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields["core id"]))
    return len(cores) if cores else cpus()


def free_cores(now: Load, physical: int) -> int:
    """`--threads auto`: the physical cores not kept busy by other work (at least 1)."""
    others = max(0.0, now.averages[0] - 1.0)  # the 1-minute average includes this process starting up
    return max(1, min(physical, now.cpus) - round(others))


def cpu_name(root: str = "/") -> str:
    try:
        with open(Path(root) / "proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


@dataclass(frozen=True, slots=True)
class Available:
    """Bytes this process can still allocate, and where the binding figure comes from."""

    bytes: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None  # 'max' (cgroup v2: no limit) -> None


def _meminfo(root: Path) -> int | None:
    try:
        for line in (root / "proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_limits(root: Path) -> list[Available]:
    """Remaining bytes under every memory limit of our cgroup and its ancestors (v2), or the v1 memory
    controller's limit (a v1 'no limit' is a huge number, which loses against the host figure anyway)."""
    from archcalc.core.units import nbytes

    out = []
    try:
        lines = (root / "proc/self/cgroup").read_text(encoding="ascii").splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":  # v2 unified hierarchy
            rel = Path(path.lstrip("/"))
            mounts = [m for m in (root / "sys/fs/cgroup", root / "sys/fs/cgroup/unified") if m.is_dir()]
            for base in (m / folder for m in mounts for folder in [rel, *rel.parents]):
                limit, used = _read_int(base / "memory.max"), _read_int(base / "memory.current")
                if limit is not None:
                    out.append(Available(max(0, limit - (used or 0)),
                                         f"cgroup memory.max {nbytes(limit)}, {nbytes(used or 0)} in use"))
        elif "memory" in controllers.split(","):
            base = root / "sys/fs/cgroup/memory" / path.lstrip("/")
            if not base.exists():
                base = root / "sys/fs/cgroup/memory"
            limit = _read_int(base / "memory.limit_in_bytes")
            used = _read_int(base / "memory.usage_in_bytes")
            if limit is not None and limit < 1 << 60:
                out.append(Available(max(0, limit - (used or 0)),
                                     f"cgroup memory.limit_in_bytes {nbytes(limit)}, {nbytes(used or 0)} in use"))
    return out


def _rlimit(root: Path) -> list[Available]:
    """RLIMIT_AS bounds the address space (VmSize), RLIMIT_DATA the data segment (VmData, which holds malloc'd
    and mmap'd private memory)."""
    from archcalc.core.units import nbytes

    try:
        status = (root / "proc/self/status").read_text(encoding="ascii").splitlines()
    except OSError:
        return []
    sizes = {}
    for line in status:
        key, _, value = line.partition(":")
        if key in ("VmSize", "VmData") and value.split():
            sizes[key] = int(value.split()[0]) * 1024
    out = []
    for limit_id, key, name in ((resource.RLIMIT_AS, "VmSize", "RLIMIT_AS"),
                                (resource.RLIMIT_DATA, "VmData", "RLIMIT_DATA")):
        soft, _ = resource.getrlimit(limit_id)
        if soft != resource.RLIM_INFINITY and key in sizes:
            out.append(Available(max(0, soft - sizes[key]),
                                 f"{name} {nbytes(soft)}, {nbytes(sizes[key])} already mapped"))
    return out


def available_memory(root: str = "/") -> Available | None:
    """The least of: the host's MemAvailable, what is left under the cgroup's memory limits, and what is left
    under the process's resource limits. None when none of them can be read (then no pre-flight check)."""
    from archcalc.core.units import nbytes

    base = Path(root)
    candidates = []
    host = _meminfo(base)
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = None
    if host is not None:
        candidates.append(Available(host, f"host MemAvailable {nbytes(host)}"))
    candidates += _cgroup_limits(base) + _rlimit(base)
    return min(candidates, key=lambda a: a.bytes) if candidates else None
