"""node-postgres and pgvector-node (tests/node, installed by
scripts/ci-deps.sh) against a live server: the script asserts and exits
non-zero on the first failure."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def test_node_postgres_with_pgvector(module_quiver):
    node = shutil.which("node")
    assert node, "node is not installed (scripts/ci-deps.sh installs it)"
    assert (NODE_DIR / "node_modules" / "pg").is_dir(), "run scripts/ci-deps.sh"
    result = subprocess.run(
        [node, str(NODE_DIR / "pgvector_test.js"), str(module_quiver.port)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
