"""Quantities as users write them: sizes (4MiB, 512KiB, 10GB, 1.5GiB, 4m, 1024) and times
(ISO 8601). Pure logic."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from amlfs.errors import UserError

# Sizes as pydantic's ByteSize reads them, without its import on the way to a mount.
SIZE = re.compile(r"\s*(\d*\.?\d+)\s*([a-z]*)\s*", re.IGNORECASE)
SIZE_UNITS = {"": 1, "b": 1}
for _power, _prefix in enumerate("kmgtpe", start=1):
    SIZE_UNITS |= {_prefix: 1000**_power, f"{_prefix}b": 1000**_power,
                   f"{_prefix}ib": 1024**_power}  # fmt: skip


def parse_size(text: str, option: str) -> int:
    """TEXT in bytes: a number and a unit (k, kB: 1000; KiB: 1024; up to E), or UserError
    naming OPTION."""
    match = SIZE.fullmatch(text)
    unit = SIZE_UNITS.get(match.group(2).lower()) if match else None
    if unit is None:
        raise UserError(f"{option}: not a size: {text!r} (try 4MiB, 512KiB, 10GB)")
    return int(float(match.group(1)) * unit)


def parse_time(text: str, option: str) -> datetime:
    """An ISO 8601 date or time (`2026-11-20`, `2026-11-20T10:00:00Z`); one without a UTC
    offset is UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except (ValueError, AttributeError):
        raise UserError(
            f"{option}: not an ISO 8601 time: {text!r} (try 2026-11-20 or 2026-11-20T10:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
