#!/usr/bin/env bash
# The MLflow UI over the embedded registry (the SQLite file and artifacts in this folder).
# Usage: mlflow/server.sh [port]   (make mlflow-ui)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
exec "${MLFLOW:-mlflow}" server \
  --backend-store-uri "sqlite:///$here/mlflow.db" \
  --artifacts-destination "$here/artifacts" \
  --serve-artifacts \
  --host 127.0.0.1 --port "${1:-5000}"
