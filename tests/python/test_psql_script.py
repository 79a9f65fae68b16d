"""psql end to end: tests/psql/meta_commands.sql (\\dt, \\d, \\d+, \\di, \\dn,
\\l, \\du, \\dx, \\copy out and in, a k-NN query, \\timing) run by the real psql
against a fresh server must print exactly tests/psql/meta_commands.out,
with \\timing's milliseconds masked.

To accept a deliberate change of the output:
QUIVER_UPDATE_EXPECTED=1 .venv/bin/pytest tests/python/test_psql_script.py
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT_DIR = Path(__file__).resolve().parents[1] / "psql"


@pytest.fixture(scope="module")
def server(module_quiver_factory):
    return module_quiver_factory()


def test_psql_meta_commands_match_expected_output(server, tmp_path):
    result = subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres",
         "-d", "postgres", "-f", str(SCRIPT_DIR / "meta_commands.sql")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PGTZ": "UTC"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    actual = re.sub(r"^Time: [0-9.]+ ms$", "Time: <ms>", result.stdout, flags=re.M)
    expected_path = SCRIPT_DIR / "meta_commands.out"
    if os.environ.get("QUIVER_UPDATE_EXPECTED"):
        expected_path.write_text(actual)
    assert actual == expected_path.read_text()
    # The \copy round trip went through a real file.
    assert (tmp_path / "psql_docs.csv").read_text().count("\n") == 3
