#!/usr/bin/env bash
# The results issue's GPU runs as one prepared call of the device tool (docs/journal.md, "The
# GPU session"): the trainings run at once on the one GPU, and the MLflow store they fill
# comes back in pieces of at most 15 MB.
#
#   bash docs/gpu_session.sh fetch   # here, once: wheels for the GPU machine (Python 3.12,
#                                    # which lacks MLflow, Optuna and Hydra) into .whl/, the
#                                    # Fashion-MNIST files into .gpu_data/ (no network there)
#   device run: command "bash docs/gpu_session.sh run", carry [".whl", ".gpu_data"],
#               timeout_s 590; it returns $OUT/store.tar.gz.part-* (mlflow.db + mlruns/),
#               calibration.txt (the epochs chosen, last line), runs.txt (each run's figures:
#               commit it at once, the pieces last only as long as the session), gpu_load.txt
#               and the logs
#   bash docs/gpu_session.sh unpack DIR   # here: that store into ./mlflow.db and ./mlruns/,
#                                         # then reproduce --table-only for each job
#
# SMOKE=1 PY=.venv/bin/python ... run: the same jobs on this CPU on 2 % of the images (the
# real runs: one epoch), to check the script end to end before device time is spent on it;
# add CALIBRATE_EPOCHS=2 TRAIN_END_S=1500 so that the CPU's slower epochs are not stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

# One line a job: a recipe, the seeds to train (one process each), its overrides. The rule
# that decides what these runs may change is written in docs/journal.md before they run.
# The 500 k budget's three candidate designs of 2026-12-04, as overrides of
# conf/experiment/best_500k.yaml (which is now the winner, C): A wide residual pairs 40-80-160
# (465,530 parameters), B nine residual pairs in three stages of 20/40/80 filters (ResNet-20's
# layout, 420,690) and C residual triples 32-64-128 (492,426).
JOBS=(
  "best_500k|0 1 2|model.filters=[40,80,160] model.convs_per_block=2"
  "best_500k|0 1 2|model.filters=[20,20,20,40,40,40,80,80,80] model.convs_per_block=2 model.pool=[none,none,max,none,none,max,none,none,none]"
  "best_500k|0 1 2|"
)
# The epochs are the most that fit the call, measured on the machine itself: all the jobs'
# processes first train CALIBRATE_EPOCHS epochs at once into a scratch store, and the slowest
# epoch and start-up seen there set the epochs of the real runs (a multiple of 10, at most
# EPOCHS_MAX) so that they end TRAIN_END_S after the start of `run`; each is stopped at
# TRAIN_END_S + KILL_MARGIN_S regardless, so the store still comes back inside the call.
export EPOCHS_MAX=${EPOCHS_MAX:-200}
export CALIBRATE_EPOCHS=${CALIBRATE_EPOCHS:-3}
export TRAIN_END_S=${TRAIN_END_S:-470}
export KILL_MARGIN_S=${KILL_MARGIN_S:-60}
export AFTER_TRAINING_S=${AFTER_TRAINING_S:-25}   # a run's test, evaluation plots and model logging

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
    fastapi starlette uvicorn python-multipart cryptography cffi pycparser)
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
  # The MLflow UI's JavaScript (8 MB) is not needed to train: without it, the wheels, the data
  # and the tree fit the 64 MiB that the device tool carries.
  zip -q -d .whl/mlflow-[0-9]*.whl 'mlflow/server/js/*' \
    || echo "warning: the MLflow wheel keeps its UI (is zip installed?)" >&2
  cp "${FMNIST_LAB_DATA:-../shared/data}"/fashion-mnist/*.gz .gpu_data/fashion-mnist/
  du -sh .whl .gpu_data
  local mib
  mib=$(( ($(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f1) \
    + $(du -sb .whl .gpu_data | awk '{s += $1} END {print s}')) / 1048576 ))
  echo "$mib MiB with the tree (the device tool carries at most 64)"
  [ "$mib" -lt 64 ] || { echo "too large to carry" >&2; exit 1; }
}

# Each job's processes, one per seed; "$@" are overrides added to every one.
launch() {
  local kind=$1 limit=$2; shift 2
  local recipe seeds sets seed n=0
  set -f  # the overrides' [..] are no globs
  for job in "${JOBS[@]}"; do
    IFS='|' read -r recipe seeds sets <<<"$job"
    for seed in $seeds; do
      n=$((n + 1))
      if [ "$kind" = calibrate ]; then
        # shellcheck disable=SC2086  # the overrides are words
        timeout "$limit" $py -m fmnist_lab.train "experiment=$recipe" $sets "$@" seed="$seed" \
          tracking.uri=sqlite:///$PWD/calibrate.db tracking.experiment="job$n" test=false \
          evaluate=false log_model=false >"$logs/calibrate-$n.log" 2>&1 &
      else
        # shellcheck disable=SC2086
        timeout "$limit" $py -m fmnist_lab.reproduce "$recipe" --seeds 3 --only-seeds "$seed" \
          --set $sets "$@" >"$logs/$recipe-job$n-seed$seed.log" 2>&1 &
      fi
      pids+=($!)
      sleep 0.5  # a new SQLite store is not made by several processes at once
    done
  done
  set +f
}

wait_all() {
  local failed=0 pid
  for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
  pids=()
  echo "$1 done at +$((SECONDS - t0)) s, $failed of $2 failed"
}

run() {
  t0=$SECONDS
  py=${PY:-python3}
  local out=${OUT:-outputs/gpu_session}
  logs=outputs/gpu_session/logs
  mkdir -p "$out" "$logs"
  if [ -d .whl ] && [ -z "${PY:-}" ]; then
    # The machine's torch (2.11) is older than pyproject's floor: the package runs from the
    # checkout, its missing dependencies from the wheels.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
  fi
  [ -d .gpu_data ] && export FMNIST_LAB_DATA=${FMNIST_LAB_DATA:-$PWD/.gpu_data}
  export MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db PYTHONUNBUFFERED=1
  local extra=(runtime.threads=1 runtime.progress_bar=false) processes=0 job
  [ "${SMOKE:-0}" = 1 ] && extra+=(data.train_fraction=0.02)
  for job in "${JOBS[@]}"; do
    IFS='|' read -r _ seeds _ <<<"$job"; processes=$((processes + $(wc -w <<<"$seeds")))
  done
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, pytorch_lightning as pl, mlflow; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'lightning', pl.__version__, 'mlflow', mlflow.__version__)"
  echo "set up at +$((SECONDS - t0)) s; $processes processes, $(nproc) CPU cores"

  pids=()
  rm -f calibrate.db
  local started=$SECONDS
  launch calibrate $((TRAIN_END_S / 3)) "${extra[@]}" trainer.max_epochs="$CALIBRATE_EPOCHS"
  wait_all calibration "$processes"
  local wall=$((SECONDS - started))
  local epochs
  epochs=$($py - "$wall" "$((TRAIN_END_S - (SECONDS - t0)))" <<'EOF' | tee "$out/calibration.txt" | tail -n 1
import os, sys
from mlflow import MlflowClient
wall, left = float(sys.argv[1]), float(sys.argv[2])
calibrate, most = int(os.environ["CALIBRATE_EPOCHS"]), int(os.environ["EPOCHS_MAX"])
after = float(os.environ["AFTER_TRAINING_S"])
client, slowest = MlflowClient("sqlite:///calibrate.db"), []
for exp in sorted(client.search_experiments(), key=lambda e: e.name):
    for run in client.search_runs([exp.experiment_id]):
        stamps = sorted(m.timestamp for m in client.get_metric_history(run.info.run_id, "val_acc"))
        if len(stamps) < 2:
            continue
        epoch = (stamps[-1] - stamps[0]) / 1000 / (len(stamps) - 1)
        slowest.append(epoch)
        print(f"{exp.name} {run.data.params.get('model.filters')} convs "
              f"{run.data.params.get('model.convs_per_block')}: {epoch:.2f} s an epoch "
              f"(after the first), {run.data.metrics.get('params', 0):.0f} params")
if not slowest:
    print("calibration: no run finished two epochs")
    print(0)
    sys.exit()
epoch = max(slowest)
# The calibration's wall time less its epochs is what start-up, data and the first epoch's
# cuDNN search cost each process; the real runs pay it again, and their test after training.
overhead = max(wall - calibrate * epoch, 0.0)
fit = (left - overhead - after) / epoch
print(f"calibration: {wall:.0f} s wall for {calibrate} epochs, slowest {epoch:.2f} s an epoch, "
      f"overhead {overhead:.0f} s, {left:.0f} s left: {fit:.0f} epochs fit")
print(max(0, min(most, int(fit // 10 * 10))))
EOF
) || epochs=0
  cat "$out/calibration.txt"
  [ "${SMOKE:-0}" = 1 ] && epochs=1
  if [ "${epochs:-0}" -lt 10 ] && [ "${SMOKE:-0}" != 1 ]; then
    echo "fewer than 10 epochs fit: no real runs" >&2
    tail -n 5 "$logs"/calibrate-*.log
  else
    echo "real runs: $epochs epochs each, started at +$((SECONDS - t0)) s"
    launch reproduce $((TRAIN_END_S + KILL_MARGIN_S - (SECONDS - t0))) "${extra[@]}" \
      trainer.max_epochs="$epochs"
    (sleep 90; command -v nvidia-smi >/dev/null && nvidia-smi \
      --query-gpu=utilization.gpu,memory.used,power.draw --format=csv >"$out/gpu_load.txt") &
    wait_all "real runs" "$processes"
    # The runs as they came out (the tables: `unpack`, here, where time is not counted), also
    # as runs.txt: small enough to commit at once, since the store that comes back lives only
    # as long as the session that fetched it.
    $py - <<'EOF' | tee "$out/runs.txt" || true
from mlflow import MlflowClient
client = MlflowClient()
exp = client.get_experiment_by_name("references")
for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]):
    p, m = run.data.params, run.data.metrics
    print(f"{run.info.status:8} {p.get('model.filters')} x{p.get('model.convs_per_block')} "
          f"seed {p.get('seed')}: {m.get('params', 0):.0f} params, val {m.get('val_acc', 0):.4f}, "
          f"test {m.get('test_acc', 0):.4f}, {m.get('train_time_s', 0):.0f} s")
EOF
  fi
  # In pieces: the device tool brings back files of at most 16 MiB.
  [ -e mlflow.db ] && tar -czf - mlflow.db mlruns | split -b 15M - "$out/store.tar.gz.part-"
  tar -czf "$out/logs.tar.gz" -C outputs/gpu_session logs
  ls -l "$out"
  echo "ended at +$((SECONDS - t0)) s"
}

unpack() {
  local dir=${1:?unpack needs the folder the files of the device call came back in}
  [ -e mlflow.db ] && { echo "./mlflow.db exists: move it away first" >&2; exit 2; }
  cat "$dir"/store.tar.gz.part-* | tar -xzf -
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
  # The epochs the calibration chose: the last line of calibration.txt.
  local epochs recipe seeds sets
  epochs=$(tail -n 1 "$dir/calibration.txt")
  set -f
  for job in "${JOBS[@]}"; do
    IFS='|' read -r recipe seeds sets <<<"$job"
    # shellcheck disable=SC2086
    .venv/bin/python -m fmnist_lab.reproduce "$recipe" --seeds 3 --table-only \
      --set $sets trainer.max_epochs="$epochs"
  done
}

case ${1:-} in
  fetch) fetch ;;
  run) run ;;
  unpack) unpack "${2:-}" ;;
  *) echo "usage: bash docs/gpu_session.sh fetch | run | unpack DIR" >&2; exit 2 ;;
esac
