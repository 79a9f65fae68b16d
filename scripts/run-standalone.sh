#!/usr/bin/env bash
# Installs what the build needs (idempotently), builds Quiver and starts it
# standalone on its embedded defaults: data in ./quiver-data, PostgreSQL
# protocol on 127.0.0.1:5488. Extra arguments go to `quiver standalone`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/ci-deps.sh --build-only
# The same build as scripts/test.sh (same features), so neither rebuilds
# what the other built.
cargo build --workspace --all-targets
exec "${CARGO_TARGET_DIR:-target}/debug/quiver" standalone "$@"
