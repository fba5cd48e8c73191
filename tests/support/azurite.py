"""A real Azurite blob service on 127.0.0.1, started and stopped by pid.

Used by the test fixtures and by bench/. The emulator comes from the repository's
package.json (`npm ci`); telemetry is off and it listens on loopback only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AZURITE_BIN = REPO / "node_modules" / ".bin" / "azurite-blob"

# Azurite's published development account: a fixed, public, emulator-only key.
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Azurite:
    """One emulator process; restartable on the same port and data folder."""

    def __init__(self, workdir: Path, *, in_memory: bool = False):
        self.workdir = workdir
        self.in_memory = in_memory
        self.port = 0
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / "azurite.log"

    @staticmethod
    def available() -> bool:
        return AZURITE_BIN.exists()

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{ACCOUNT};"
        )

    def start(self) -> None:
        """Start on a free port (or the previous one, on a restart); wait until it serves."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = self.port or free_port()
            if self._start_once():
                return
            self.port = 0
        raise RuntimeError(f"Azurite did not start; see {self.log_path}")

    def _start_once(self) -> bool:
        args = [
            str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
            "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
        ]  # fmt: skip
        args += ["--inMemoryPersistence"] if self.in_memory else ["--location", str(self.workdir)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return True
            except OSError:
                time.sleep(0.1)
        self.stop()
        return False

    def stop(self) -> None:
        """End the emulator we started, by its pid; the port is kept for a restart."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> Azurite:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
