"""The systemd units: systemd accepts them, and they keep what docs/systemd.md promises,
above all that nothing gives the service a mount namespace of its own (its FUSE mounts
would then be invisible to the rest of the machine)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

UNITS_DIR = Path(__file__).resolve().parent.parent / "systemd"
INSTALLED_AMLFS = "/opt/amlfs/bin/amlfs"

# unit file -> the config file its daemon serves
CONFIGS = {
    "amlfs.service": "/etc/amlfs/mounts.yaml",
    "amlfs-mount@.service": "/etc/amlfs/mounts.d/%i.yaml",
}
# unit file -> the name systemd-analyze verifies it as: a template as one of its instances
VERIFIED_AS = {"amlfs.service": "amlfs.service", "amlfs-mount@.service": "amlfs-mount@data.service"}

# Each of these runs the service in a file system namespace of its own, whose mounts do
# not propagate to the host (systemd.exec(5)); DynamicUser= implies several of them.
NAMESPACE_OPTIONS = {
    "PrivateMounts", "PrivateTmp", "PrivateDevices", "PrivateNetwork", "PrivateIPC",
    "PrivateUsers", "ProtectSystem", "ProtectHome", "ProtectKernelTunables",
    "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectProc",
    "ProcSubset", "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths",
    "NoExecPaths", "BindPaths", "BindReadOnlyPaths", "TemporaryFileSystem", "RootDirectory",
    "RootImage", "MountImages", "ExtensionImages", "ExtensionDirectories", "MountAPIVFS",
    "MountFlags", "LogNamespace", "NetworkNamespacePath", "IPCNamespacePath", "DynamicUser",
}  # fmt: skip

Unit = dict[str, dict[str, list[str]]]  # section -> key -> values, in order


def parse(path: Path) -> Unit:
    """A unit file as systemd reads it: a key may repeat; comments and blanks are skipped."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"{path.name}:{number}: continued lines are not parsed"
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and section is not None, f"{path.name}:{number}: not KEY=VALUE in a section"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times"
    return values[0]


def words(unit: Unit, section: str, key: str) -> list[str]:
    return [word for value in unit.get(section, {}).get(key, []) for word in value.split()]


@pytest.mark.parametrize("name", CONFIGS)
def test_the_unit_keeps_its_promises(name: str) -> None:
    unit = parse(UNITS_DIR / name)
    assert one(unit, "Service", "ExecStart").split() == [
        INSTALLED_AMLFS, "daemon", "--config", CONFIGS[name],
    ]  # fmt: skip
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "Restart") == "on-failure"
    assert one(unit, "Service", "RestartPreventExitStatus") == "2"  # an unreadable config
    assert one(unit, "Service", "OOMPolicy") == "continue"  # the daemon restarts that mount
    assert one(unit, "Service", "KillMode") == "mixed"
    # The daemon pings while its mounts answer (test_watchdog: the gap it may leave).
    assert one(unit, "Service", "WatchdogSec") == "30s"
    # More open files than the soft default of 1024 (test_watchdog holds 2000 at once).
    assert int(one(unit, "Service", "LimitNOFILE")) >= 4096
    assert one(unit, "Service", "ExecReload").split() == ["/bin/kill", "-HUP", "$MAINPID"]
    # "-": a missing credentials file is no error (anonymous or Azure AD datastores).
    assert one(unit, "Service", "EnvironmentFile") == "-/etc/amlfs/credentials.env"
    assert "AMLFS_HOME=/var/lib/amlfs" in words(unit, "Service", "Environment")
    assert one(unit, "Service", "StateDirectory") == "amlfs"
    # What the daemon creates (state folder, cache, staging, journal, logs) is root's alone.
    assert one(unit, "Service", "StateDirectoryMode") == "0700"
    assert one(unit, "Service", "UMask") == "0077"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert "network-online.target" in words(unit, "Unit", "After")
    assert "network-online.target" in words(unit, "Unit", "Wants")
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    # The hardening leaves what mounting needs.
    assert "CAP_SYS_ADMIN" in words(unit, "Service", "CapabilityBoundingSet")
    assert words(unit, "Service", "DeviceAllow") == ["/dev/fuse", "rw"]
    assert "@mount" in words(unit, "Service", "SystemCallFilter")


@pytest.mark.parametrize("name", CONFIGS)
def test_no_option_gives_the_service_its_own_mount_namespace(name: str) -> None:
    unit = parse(UNITS_DIR / name)
    present = sorted(NAMESPACE_OPTIONS & set(unit.get("Service", {})))
    assert not present, f"{name} sets {present}: its mounts would be invisible to the host"


def test_one_mount_per_instance_runs_like_the_service() -> None:
    service = parse(UNITS_DIR / "amlfs.service")["Service"]
    template = parse(UNITS_DIR / "amlfs-mount@.service")["Service"]
    assert {k: v for k, v in template.items() if k != "ExecStart"} == {
        k: v for k, v in service.items() if k != "ExecStart"
    }


def verify(name: str, text: str, folder: Path) -> list[str]:
    """What systemd-analyze verify says against unit NAME with content TEXT, its amlfs
    replaced by this environment's (verify checks that ExecStart= exists). Lines about
    other units on this machine are not ours to judge."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt: systemd)")
    amlfs = Path(sys.executable).parent / "amlfs"
    require(amlfs.exists(), f"no amlfs entry point beside {sys.executable} (pip install -e .)")
    assert INSTALLED_AMLFS in text
    (folder / name).write_text(text.replace(INSTALLED_AMLFS, str(amlfs)))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(folder / VERIFIED_AS[name])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    ours = name.partition("@")[0] + "@" if "@" in name else name  # any instance of a template
    problems = [line for line in (proc.stdout + proc.stderr).splitlines() if ours in line]
    if proc.returncode != 0:
        problems.append(f"exit status {proc.returncode}: {proc.stderr.strip()}")
    return problems


@pytest.mark.parametrize("name", CONFIGS)
def test_systemd_accepts_the_unit(name: str, tmp_path: Path) -> None:
    assert verify(name, (UNITS_DIR / name).read_text(), tmp_path) == []


def test_verification_would_notice_a_broken_unit(tmp_path: Path) -> None:
    name = "amlfs-mount@.service"
    text = (UNITS_DIR / name).read_text().replace("KillMode=mixed", "KillMode=gently")
    problems = verify(name, text, tmp_path)
    assert any("gently" in line for line in problems), problems
