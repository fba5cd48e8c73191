"""Whether a recorded pipeline run is still going: a run whose `amlfs pipeline run` was
killed outright never records its end, and would read as running forever."""

from __future__ import annotations

import socket

from amlfs import mounts
from amlfs.registry.pipelines import PipelineRun


def alive(host: str, pid: int) -> bool:
    """Whether the process PID on HOST may still run (on another host amlfs cannot tell)."""
    return host != socket.gethostname() or mounts.daemon_alive(pid)


def state_of(run: PipelineRun) -> str:
    """running, succeeded, failed, or lost (no end recorded and its process is gone)."""
    if run.ended_at is None and not alive(run.host, run.pid):
        return "lost"
    return run.state
