"""Which command lines start a mount's daemon ahead of the command's own checks
(amlfs.warm): an `amlfs mount` that will fork a daemon, and nothing else."""

from __future__ import annotations

import pytest

from amlfs.warm import mounting


@pytest.mark.parametrize(
    "argv",
    [["mount", "ds:1", "/mnt"], ["--home", "/h", "mount", "ds", "/mnt"],
     ["--home=/h", "--debug", "mount", "ds", "/mnt", "--cache-size", "1GiB"]],
)  # fmt: skip
def test_a_mount_that_forks_a_daemon_starts_it_ahead(argv: list[str]) -> None:
    assert mounting(argv)


@pytest.mark.parametrize(
    "argv",
    [[], ["--home", "/h"], ["status"], ["output", "mount", "x:y", "/mnt"],
     ["--home", "mount", "status"], ["mount", "ds", "/mnt", "--foreground"],
     ["mount", "--help"], ["mount", "-h"], ["dataset", "show", "mount"]],
)  # fmt: skip
def test_other_commands_start_nothing_ahead(argv: list[str]) -> None:
    assert not mounting(argv)
