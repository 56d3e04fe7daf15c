"""The whole host's busy CPU time, for the benchmarks that say how much of the machine a run took."""

from __future__ import annotations

import os
from pathlib import Path


def host_busy() -> float:
    """Seconds of CPU time the host's cores have spent busy since boot (/proc/stat: user, nice,
    system, irq, softirq; not idle, iowait nor time stolen by the hypervisor)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
