"""What the rest of the suite relies on. Under CI these fail instead of skipping, so
that the emulator and FUSE tests can never be skipped there without anyone noticing."""

from __future__ import annotations

import os
import shutil

from tests.conftest import require
from tests.support.azurite import Azurite


def test_the_azure_emulator_is_installed() -> None:
    require(Azurite.available(), "Azurite is not installed (run `npm ci`)")


def test_fuse_is_usable() -> None:
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require(os.access("/dev/fuse", os.R_OK | os.W_OK), "/dev/fuse is not accessible")
    require(shutil.which("fusermount3") is not None, "fusermount3 is missing (apt: fuse3)")
    import pyfuse3  # noqa: F401  (fails if the extension was built without libfuse3)


def test_pyfuse3_is_the_patched_build() -> None:
    """Read-only mounts answer OPEN and OPENDIR with ENOSYS and need the inode on each read
    and readdir: pyfuse3 built by scripts/bootstrap.sh with patches/pyfuse3 (a plain
    release cannot mount)."""
    from importlib.metadata import version

    import pyfuse3

    require(
        "+amlfs." in version("pyfuse3"), f"pyfuse3 {version('pyfuse3')} is not the patched build"
    )
    for attribute in ("read_with_inode", "readdir_with_inode"):
        require(getattr(pyfuse3.Operations, attribute, None) is False, f"no {attribute}")
