#!/usr/bin/env bash
# The results issue's GPU runs as one prepared call of the device tool (docs/results.md, "The
# GPU session"): the trainings run at once on the one GPU, and the MLflow store they fill
# comes back as one file.
#
#   bash docs/gpu_session.sh fetch   # here, once: wheels for the GPU machine (Python 3.12,
#                                    # which lacks MLflow, Optuna and Hydra) into .whl/, the
#                                    # Fashion-MNIST files into .gpu_data/ (no network there)
#   device run: command "bash docs/gpu_session.sh run", carry [".whl", ".gpu_data"],
#               timeout_s 600; it returns $OUT/store.tar.gz (mlflow.db + mlruns/) and the logs
#   bash docs/gpu_session.sh unpack DIR   # here: that store into ./mlflow.db and ./mlruns/,
#                                         # then reproduce --table-only and tta --recipe
#
# SMOKE=1 ... run: the same jobs on this CPU for one epoch on 2 % of the images, to check the
# script end to end before device time is spent on it.
set -euo pipefail
cd "$(dirname "$0")/.."

# One line a job: a recipe, the seeds to train (one process each), its overrides. The rule
# that decides what these runs may change is written in docs/results.md before they run.
JOBS=(
  "best_50k|0 1 2|trainer.max_epochs=150"
)
LIMIT_S=${LIMIT_S:-480}   # each training is stopped after this long: the call's 600 s hold
                          # the start, the set-up and the packing as well

fetch() {
  local py=.venv/bin/python
  mkdir -p .whl .gpu_data/fashion-mnist
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >>.git/info/exclude
  grep -qx '/.gpu_data/' .git/info/exclude 2>/dev/null || echo /.gpu_data/ >>.git/info/exclude
  # What the training path imports that the GPU machine's image does not have (its package
  # list: the device tool's KINDS.md), at the versions this checkout's .venv runs.
  local names=(mlflow mlflow-skinny mlflow-tracing alembic sqlalchemy mako sqlparse cachetools
    opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
    pydantic pydantic-core annotated-types typing-inspection python-dotenv importlib-metadata
    gitpython gitdb smmap optuna colorlog hydra-core omegaconf databricks-sdk google-auth
    pyasn1 pyasn1-modules graphene graphql-core graphql-relay flask blinker itsdangerous
    fastapi starlette uvicorn)
  local pins=()
  for name in "${names[@]}"; do
    pins+=("$name==$($py -c "import importlib.metadata as m; print(m.version('$name'))")")
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d .whl "${pins[@]}"
  # antlr4 4.9 (hydra-core's pin) is published as a source archive only: build its wheel.
  python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==$($py -c \
    "import importlib.metadata as m; print(m.version('antlr4-python3-runtime'))")"
  cp "${FMNIST_LAB_DATA:-../shared/data}"/fashion-mnist/*.gz .gpu_data/fashion-mnist/
  du -sh .whl .gpu_data
}

run() {
  local py=${PY:-python3} out=${OUT:-outputs/gpu_session}
  mkdir -p "$out" outputs/gpu_session/logs
  if [ -d .whl ] && [ -z "${PY:-}" ]; then
    # The machine's torch (2.11) is older than pyproject's floor: the package runs from the
    # checkout, its missing dependencies from the wheels.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
  fi
  [ -d .gpu_data ] && export FMNIST_LAB_DATA=${FMNIST_LAB_DATA:-$PWD/.gpu_data}
  export MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db PYTHONUNBUFFERED=1
  local extra=() threads=$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))
  [ "${SMOKE:-0}" = 1 ] && extra=(trainer.max_epochs=1 data.train_fraction=0.02) threads=1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv
  $py -c "import torch, pytorch_lightning as pl, mlflow; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'lightning', pl.__version__, 'mlflow', mlflow.__version__)"
  local pids=() recipe seeds sets seed
  for job in "${JOBS[@]}"; do
    IFS='|' read -r recipe seeds sets <<<"$job"
    for seed in $seeds; do
      # shellcheck disable=SC2086  # the overrides are words
      timeout "$LIMIT_S" $py -m fmnist_lab.reproduce "$recipe" --seeds 3 --only-seeds "$seed" \
        --set $sets "${extra[@]}" trainer.threads=$threads trainer.progress_bar=false \
        >"outputs/gpu_session/logs/$recipe-$seed.log" 2>&1 &
      pids+=($!)
    done
  done
  local failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  echo "trainings done at $(date -u +%H:%M:%S), $failed of ${#pids[@]} did not finish"
  for job in "${JOBS[@]}"; do
    IFS='|' read -r recipe seeds sets <<<"$job"
    # shellcheck disable=SC2086
    $py -m fmnist_lab.reproduce "$recipe" --seeds 3 --table-only --set $sets "${extra[@]}" || true
  done
  tail -n 3 outputs/gpu_session/logs/*.log
  tar -czf "$out/store.tar.gz" mlflow.db mlruns
  tar -czf "$out/logs.tar.gz" -C outputs/gpu_session logs
  ls -l "$out"
}

unpack() {
  local dir=${1:?unpack needs the folder the files of the device call came back in}
  [ -e mlflow.db ] && { echo "./mlflow.db exists: move it away first" >&2; exit 2; }
  tar -xzf "$dir/store.tar.gz"
  # The store names its artifacts by the device's absolute paths; here they lie in ./mlruns.
  .venv/bin/python - <<'EOF'
import os, sqlite3
db = sqlite3.connect("mlflow.db")
(root,) = db.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
old, new = root.removeprefix("file://").rsplit("/mlruns", 1)[0], os.getcwd()
for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
    for _, column, kind, *_ in db.execute(f"PRAGMA table_info({table})").fetchall():
        if kind.upper().startswith(("TEXT", "VARCHAR")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) "
                       f"WHERE {column} LIKE ?", (old, new, f"%{old}%"))
db.commit()
print(f"artifact paths: {old} -> {new}")
EOF
  for job in "${JOBS[@]}"; do
    IFS='|' read -r recipe seeds sets <<<"$job"
    # shellcheck disable=SC2086
    .venv/bin/python -m fmnist_lab.reproduce "$recipe" --seeds 3 --table-only --set $sets
  done
}

case ${1:-} in
  fetch) fetch ;;
  run) run ;;
  unpack) unpack "${2:-}" ;;
  *) echo "usage: bash docs/gpu_session.sh fetch | run | unpack DIR" >&2; exit 2 ;;
esac
