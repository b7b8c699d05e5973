"""CPU time of processes and cores, read from ``/proc`` (Linux).

The benchmark charges a server with the CPU seconds its own process tree spent
(``utime + stime`` of the process and every descendant, such as uvicorn's workers),
so what PostgreSQL, Redis, the model server or the load generator spend on the same
machine does not count against it. Per-core busy shares show what else ran.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name, from field 3 on."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may itself hold spaces or parentheses.
    return text[text.rindex(")") + 2 :].split()


def process_ticks(pid: int) -> int | None:
    """``utime + stime`` of one process in clock ticks, or None once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # Fields 14 and 15 of the stat line; this list starts at field 3.
    return int(fields[11]) + int(fields[12])


def parent_map() -> dict[int, list[int]]:
    """Children of every process, from each process's parent id (``/proc/<pid>/stat``)."""
    kids: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            kids.setdefault(int(fields[1]), []).append(int(entry.name))
    return kids


def process_tree(pid: int, kids: Mapping[int, list[int]] | None = None) -> list[int]:
    """A process and all its descendants."""
    kids = parent_map() if kids is None else kids
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending.extend(kids.get(current, ()))
    return tree


def pids_named(name: str) -> list[int]:
    """Every process whose command name is ``name`` (``postgres``, ``redis-server``)."""
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() == name:
                found.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def pids_serving(database: str) -> list[int]:
    """PostgreSQL backends connected to ``database`` (their title names it)."""
    found = []
    for pid in pids_named("postgres"):
        try:
            title = (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if f" {database} " in title:
            found.append(pid)
    return found


def pin(pids: Iterable[int], cpus: set[int]) -> int:
    """Restrict processes to ``cpus``; returns how many were pinned."""
    pinned = 0
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except (ProcessLookupError, PermissionError):
            continue
        pinned += 1
    return pinned


def listening_pid(port: int) -> int | None:
    """The oldest process holding a TCP socket listening on ``port`` (IPv4), or None.

    With uvicorn's ``--workers`` the supervisor and its workers share the socket;
    the supervisor, an ancestor of the others, has the lowest start time.
    """
    inodes = set()
    for line in (PROC / "net" / "tcp").read_text().splitlines()[1:]:
        parts = line.split()
        local, state, inode = parts[1], parts[3], parts[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
            inodes.add(f"socket:[{inode}]")
    if not inodes:
        return None
    holders = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
            if any(os.readlink(fd) in inodes for fd in fds):
                holders.append(int(entry.name))
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            continue
    started = {pid: int(f[19]) for pid in holders if (f := _stat_fields(pid)) is not None}
    return min(started, key=started.__getitem__) if started else None


def allowed_cpus(pid: int) -> str | None:
    """The CPU list a process may run on (``Cpus_allowed_list``), e.g. ``"0"``."""
    try:
        for line in (PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def core_ticks() -> dict[str, tuple[int, int]]:
    """Busy and total clock ticks of each core since boot, by ``cpuN``."""
    cores = {}
    for line in (PROC / "stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(v) for v in values[:8]]
        idle = ticks[3] + ticks[4]  # idle and iowait
        cores[name] = (sum(ticks) - idle, sum(ticks))
    return cores


@dataclass(frozen=True)
class Reading:
    """Ticks per process of each group, and per core, at one moment."""

    groups: dict[str, dict[int, int]]
    cores: dict[str, tuple[int, int]]


class CpuMeter:
    """CPU seconds of named groups of processes between two readings.

    A group is a process tree (a server and its workers, found anew at each reading),
    a single process, every process with a given command name, or the PostgreSQL
    backends serving one database. A process that appears between two
    readings counts in full; one that exits between them drops out.
    """

    def __init__(
        self,
        trees: Mapping[str, int | None],
        named: Mapping[str, str] | None = None,
        single: Mapping[str, int | None] | None = None,
        databases: Mapping[str, str] | None = None,
    ) -> None:
        """Name the groups to measure.

        Args:
            trees: Group name to the root pid of a process tree (None: not measured).
            named: Group name to a command name, for machine-wide groups.
            single: Group name to one process, without its children.
            databases: Group name to a database whose backends form the group.
        """
        self.trees = {name: pid for name, pid in trees.items() if pid is not None}
        self.named = dict(named or {})
        self.single = {name: pid for name, pid in (single or {}).items() if pid is not None}
        self.databases = dict(databases or {})

    def _group_pids(self) -> dict[str, Iterable[int]]:
        kids = parent_map()
        groups: dict[str, Iterable[int]] = {
            name: process_tree(pid, kids) for name, pid in self.trees.items()
        }
        groups.update({name: pids_named(comm) for name, comm in self.named.items()})
        groups.update({name: [pid] for name, pid in self.single.items()})
        groups.update({name: pids_serving(db) for name, db in self.databases.items()})
        return groups

    def read(self) -> Reading:
        """Read every group's processes and every core now."""
        groups = {}
        for name, pids in self._group_pids().items():
            ticks = {pid: t for pid in pids if (t := process_ticks(pid)) is not None}
            groups[name] = ticks
        return Reading(groups=groups, cores=core_ticks())

    @staticmethod
    def seconds(before: Reading, after: Reading, group: str) -> float:
        """CPU seconds one group spent between the readings."""
        old = before.groups.get(group, {})
        spent = sum(t - old.get(pid, 0) for pid, t in after.groups.get(group, {}).items())
        return max(spent, 0) / TICKS_PER_S

    def report(self, before: Reading, after: Reading, wall_s: float) -> dict[str, object]:
        """CPU seconds per group, each also as a share of one core over ``wall_s``,
        and the busy share of each core."""
        groups = {}
        for group in after.groups:
            spent = CpuMeter.seconds(before, after, group)
            groups[group] = {
                "cpu_s": round(spent, 3),
                "core_share": round(spent / wall_s, 3) if wall_s else None,
            }
        cores = {}
        for core, (busy, total) in after.cores.items():
            old_busy, old_total = before.cores.get(core, (0, 0))
            elapsed = total - old_total
            cores[core] = round((busy - old_busy) / elapsed, 3) if elapsed else None
        # What the named groups do not explain: other users' processes, the kernel.
        known = sum(
            g["core_share"] or 0
            for name, g in groups.items()
            # Backends of one database are already inside the machine-wide postgres group.
            if name not in self.databases
        )
        busy_cores = sum(c or 0 for c in cores.values())
        return {
            "processes": groups,
            "cores_busy": cores,
            "unattributed_core_share": round(busy_cores - known, 3),
        }
