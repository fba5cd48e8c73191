"""Every example of docs/python.md runs as written, each in a process of its own, against
the dataset the page describes (on the emulator); one that needs a library that is not
installed (torch) is skipped, saying which."""

from __future__ import annotations

import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import CONNECTION_ENV, Cli, Container

PAGE = Path(__file__).parent.parent / "docs" / "python.md"
EXAMPLE = re.compile(r"<!-- example: ([\w-]+)((?:, needs \w+)*) -->\n```python\n(.*?)```", re.S)
DAYS = ("mon", "tue", "wed", "thu", "fri")


def examples() -> list[tuple[str, list[str], str]]:
    found = [(name, re.findall(r"needs (\w+)", needs), code)
             for name, needs, code in EXAMPLE.findall(PAGE.read_text())]  # fmt: skip
    assert len(found) >= 5, "docs/python.md lost its examples"
    return found


def weather_files() -> dict[str, bytes]:
    """What the page says `weather:1` holds."""
    files, rows = {}, {"day": [], "hour": [], "temp_c": [], "humidity": []}
    for d, day in enumerate(DAYS):
        lines = ["hour,temp_c,humidity"]
        for hour in range(24):
            temp, humidity = round(10 + d + hour / 4, 1), (hour * 7 + d) % 100
            lines.append(f"{hour},{temp},{humidity}")
            for key, value in zip(rows, (day, hour, temp, humidity), strict=True):
                rows[key].append(value)
        files[f"week27/{day}.csv"] = ("\n".join(lines) + "\n").encode()
    buffer = io.BytesIO()
    pq.write_table(pa.table(rows), buffer)
    files["readings.parquet"] = buffer.getvalue()
    return files


@pytest.fixture
def weather(cli: Cli, container: Container) -> Cli:
    container.put(weather_files())
    cli.ok("datastore", "add", "store", container.url, "--connection-string-env", CONNECTION_ENV)
    cli.ok("dataset", "register", "weather", "--datastore", "store", "--path", ".")
    return cli


@pytest.mark.parametrize(("name", "needs", "code"), examples(), ids=[e[0] for e in examples()])
def test_the_example_runs_as_written(
    weather: Cli, tmp_path: Path, name: str, needs: list[str], code: str
) -> None:
    if missing := [module for module in needs if importlib.util.find_spec(module) is None]:
        pytest.skip(f"{missing[0]} is not installed (an optional extra of the examples)")
    bin_folder = str(Path(sys.executable).parent)  # where `amlfs` is, for the examples
    env = {**os.environ, "AMLFS_HOME": str(weather.home),
           "PATH": f"{bin_folder}{os.pathsep}{os.environ.get('PATH', '')}"}  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, f"example {name} failed:\n{result.stdout}\n{result.stderr}"
