"""CPU time and memory of a process tree, read from /proc (Linux).

CPU is utime + stime of the root and every live descendant (workers), plus cutime + cstime
(children already reaped), in seconds. Take one reading before and one after a load run;
the difference is the CPU the tree spent on it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TreeUsage", "cpu_seconds", "descendants", "idle_cpus", "machine_ticks", "read_stat", "rss_bytes", "tree_usage"]

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def read_stat(pid: int) -> tuple[int, int, int, int, int]:
    """(ppid, utime, stime, cutime, cstime) in clock ticks from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "; comm may hold spaces
    # fields[0] is state (field 3); ppid is field 4; utime..cstime are fields 14..17
    return int(fields[1]), int(fields[11]), int(fields[12]), int(fields[13]), int(fields[14])


def descendants(root: int) -> list[int]:
    """Live descendants of ``root`` (not ``root`` itself), found by scanning /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ppid = read_stat(int(entry.name))[0]
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [root]
    while todo:
        kids = parents.get(todo.pop(), [])
        out.extend(kids)
        todo.extend(kids)
    return out


def cpu_seconds(pids: list[int]) -> float:
    """Sum of utime+stime+cutime+cstime of ``pids`` (vanished ones count zero), in seconds."""
    ticks = 0
    for pid in pids:
        try:
            _, ut, st, cut, cst = read_stat(pid)
        except (FileNotFoundError, ProcessLookupError):
            continue
        ticks += ut + st + cut + cst
    return ticks / _TICK


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (FileNotFoundError, ProcessLookupError):
        return 0


@dataclass(frozen=True)
class TreeUsage:
    cpu_s: float
    pids: tuple[int, ...]
    rss: tuple[int, ...]  # per pid, bytes

    @property
    def rss_mb(self) -> list[float]:
        return [round(r / 2**20, 1) for r in self.rss]


def tree_usage(root: int, include_root_rss: bool = True) -> TreeUsage:
    """CPU of ``root`` and its descendants, and the RSS of each of them."""
    pids = [root, *descendants(root)]
    rss_pids = pids if include_root_rss else pids[1:]
    return TreeUsage(cpu_seconds(pids), tuple(pids), tuple(rss_bytes(p) for p in rss_pids))


def machine_ticks() -> tuple[int, int]:
    """(idle, total) clock ticks of the whole machine since boot (first line of /proc/stat)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])  # guest time is already counted in user


def idle_cpus(before: tuple[int, int], after: tuple[int, int]) -> float:
    """How many CPUs of the machine were idle, on average, between two :func:`machine_ticks`."""
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total * (os.cpu_count() or 1), 2) if total > 0 else 0.0
