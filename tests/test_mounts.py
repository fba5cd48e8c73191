"""Reading the kernel's mount table: mountpoints come back as the paths users gave."""

from __future__ import annotations

from amlfs.mounts import parse_mountinfo

LINES = (
    "36 35 98:0 / /mnt/data\\040set rw,noatime - fuse.amlfs amlfs:ds:1 ro\n"
    "37 35 98:0 / /mnt/données rw - fuse.amlfs amlfs:ds:2 ro\n"
    "38 35 98:0 / /srv/a\\134b rw - ext4 /dev/sda1 rw\n"
)


def test_escaped_and_unicode_mountpoints_are_read_back_as_paths() -> None:
    assert parse_mountinfo(LINES) == {
        "/mnt/data set": "fuse.amlfs",
        "/mnt/données": "fuse.amlfs",
        "/srv/a\\b": "ext4",
    }
