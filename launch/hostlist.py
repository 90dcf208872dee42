"""Slurm's hostlist syntax: `node[01-04,07],login-a` -> node01, node02, node03, node04, node07, login-a.

An entry is a host name in which each bracket group `[a-b,c,...]` stands for a list of numbers.
Numbers keep the width of the low bound as written (`[08-10]` -> 08, 09, 10). Several groups in one
name expand as Slurm does: the first group varies slowest (`rack[1-2]-n[1-2]` -> rack1-n1, rack1-n2,
rack2-n1, rack2-n2). Commas inside brackets separate numbers, outside them hosts.
"""

from __future__ import annotations

import itertools
import math
import re

MAX_HOSTS = 1 << 16  # a typo like node[1-99999999] is an error, not a few gigabytes of names

_NUMBER = re.compile(r"[0-9]+")


def expand(hostlist: str) -> list[str]:
    """Every host `hostlist` names, in order; ValueError naming the bad text if it is malformed."""
    hosts: list[str] = []
    for entry in _entries(hostlist):
        groups = [[part] if i % 2 == 0 else _numbers(part, entry) for i, part in enumerate(_parts(entry))]
        if len(hosts) + math.prod(len(g) for g in groups) > MAX_HOSTS:
            raise ValueError(f"hostlist {hostlist!r} names more than {MAX_HOSTS} hosts")
        # product() varies its last factor fastest, which is Slurm's order
        hosts.extend("".join(names) for names in itertools.product(*groups))
    return hosts


def first(hostlist: str) -> str:
    """The first host `hostlist` names (Slurm's node 0 for a job's node list)."""
    return expand(hostlist)[0]


def _entries(hostlist: str) -> list[str]:
    """Split at the commas outside brackets, checking that brackets pair up and nothing is empty."""
    if not hostlist.strip():
        raise ValueError(f"empty hostlist {hostlist!r}")
    entries, start, depth = [], 0, 0
    for i, c in enumerate(hostlist):
        if c == "[":
            if depth:
                raise ValueError(f"nested '[' at position {i} in hostlist {hostlist!r}")
            depth = 1
        elif c == "]":
            if not depth:
                raise ValueError(f"']' without '[' at position {i} in hostlist {hostlist!r}")
            depth = 0
        elif c == "," and not depth:
            entries.append(hostlist[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"'[' without ']' in hostlist {hostlist!r}")
    entries.append(hostlist[start:])
    for entry in entries:
        if not entry.strip():
            raise ValueError(f"empty host name in hostlist {hostlist!r}")
        if any(c.isspace() for c in entry.strip()):
            raise ValueError(f"space inside host name {entry.strip()!r} in hostlist {hostlist!r}")
    return [entry.strip() for entry in entries]


def _parts(entry: str) -> list[str]:
    """Alternating literal text and bracket contents: 'a[1-2]b[3]' -> ['a', '1-2', 'b', '3', '']."""
    return re.split(r"\[([^\]]*)\]", entry)


def _numbers(ranges: str, entry: str) -> list[str]:
    """'01-03,7' -> ['01', '02', '03', '7']: each range padded to the width of its low bound."""
    numbers: list[str] = []
    for item in ranges.split(","):
        lo, dash, hi = item.partition("-")
        hi = hi if dash else lo
        if not (_NUMBER.fullmatch(lo) and _NUMBER.fullmatch(hi)):
            what = "empty range" if not item else f"range {item!r} is not a number or a-b of numbers"
            raise ValueError(f"{what} in [{ranges}] of host {entry!r}")
        if int(lo) > int(hi):
            raise ValueError(f"reversed range {item!r} ({lo} > {hi}) in host {entry!r}")
        if int(hi) - int(lo) >= MAX_HOSTS:
            raise ValueError(f"range {item!r} in host {entry!r} names more than {MAX_HOSTS} hosts")
        numbers.extend(f"{n:0{len(lo)}d}" for n in range(int(lo), int(hi) + 1))
    return numbers
