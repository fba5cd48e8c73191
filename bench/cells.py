"""One measured figure (a cell of the report) and the ways it can be missing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

OK, NOT_YET, FAILED = "ok", "not yet", "failed"


@dataclass
class Cell:
    backend: str
    workload: str
    system: str
    value: float | None = None
    status: str = OK
    note: str = ""  # shown beside the value, e.g. per-file latency percentiles
    extra: dict = field(default_factory=dict)  # raw detail for the JSON only

    def public(self) -> dict:
        return asdict(self)


class NotYet(Exception):
    """The amlfs feature a measurement needs does not exist yet."""
