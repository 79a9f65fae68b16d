"""JDBC (Debian's libpostgresql-jdbc-java, installed by scripts/ci-deps.sh)
against a live server: tests/jdbc/QuiverJdbcTest.java asserts and throws on
the first failure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

JDBC_JAR = Path("/usr/share/java/postgresql.jar")
SOURCE = Path(__file__).resolve().parents[1] / "jdbc" / "QuiverJdbcTest.java"


def test_jdbc_metadata_and_prepared_vector_query(module_quiver):
    java = shutil.which("java")
    assert java, "java is not installed (scripts/ci-deps.sh installs it)"
    assert JDBC_JAR.exists(), "libpostgresql-jdbc-java is not installed (scripts/ci-deps.sh)"
    result = subprocess.run(
        [java, "-cp", str(JDBC_JAR), str(SOURCE), str(module_quiver.port)],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
