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
# The search from scratch instead of the job list (issue 31): `study` runs the sweep
# min_params_94 (multi-fidelity, nothing enqueued) on the GPU, the 500 k budget first, and
# returns outputs/gpu_study/ (Optuna journal, mlflow.db) and mlruns/ as study.tar.gz.part-*,
# with study.txt (the report's table and every trial: commit it at once).
#   device run: command "bash docs/gpu_session.sh study", carry [".whl", ".gpu_data"],
#               timeout_s 590
#   bash docs/gpu_session.sh unstudy DIR  # here: outputs/gpu_study/ and mlruns/ from the
#       pieces, and the report. A next device call with carry [".whl", ".gpu_data",
#       "outputs/gpu_study", "mlruns"] and the same command resumes the study where it stopped.
#
# The search from scratch instead of the job list (issue 31): `study` runs the sweep
# min_params_94 (multi-fidelity, nothing enqueued) on the GPU for STUDY_S seconds, the 500 k
# budget first (STUDY_BUDGETS), and returns outputs/gpu_study/ (the Optuna journal, mlflow.db,
# mlruns/) as study.tar.gz.part-* and study.txt (its trials and finalists: commit at once).
#   device run: command "bash docs/gpu_session.sh study", carry [".whl", ".gpu_data"],
#               timeout_s 590
#   bash docs/gpu_session.sh unstudy DIR  # here: outputs/gpu_study/ from those pieces; the
#               # next device call carries it too (carry [".whl", ".gpu_data",
#               # "outputs/gpu_study"]) and the same `study` resumes the study where it stopped
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

# The GPU machine's Python with this checkout and the wheels of `fetch`; the data of .gpu_data.
setup() {
  t0=$SECONDS
  py=${PY:-python3}
  if [ -d .whl ] && [ -z "${PY:-}" ]; then
    # The machine's torch (2.11) is older than pyproject's floor: the package runs from the
    # checkout, its missing dependencies from the wheels.
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
  fi
  [ -d .gpu_data ] && export FMNIST_LAB_DATA=${FMNIST_LAB_DATA:-$PWD/.gpu_data}
  export PYTHONUNBUFFERED=1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $py -c "import torch, pytorch_lightning as pl, mlflow; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'lightning', pl.__version__, 'mlflow', mlflow.__version__)"
  echo "set up at +$((SECONDS - t0)) s, $(nproc) CPU cores"
}

run() {
  setup
  local out=${OUT:-outputs/gpu_session}
  logs=outputs/gpu_session/logs
  mkdir -p "$out" "$logs"
  export MLFLOW_TRACKING_URI=sqlite:///$PWD/mlflow.db
  local extra=(runtime.threads=1 runtime.progress_bar=false) processes=0 job
  [ "${SMOKE:-0}" = 1 ] && extra+=(data.train_fraction=0.02)
  for job in "${JOBS[@]}"; do
    IFS='|' read -r _ seeds _ <<<"$job"; processes=$((processes + $(wc -w <<<"$seeds")))
  done
  echo "$processes processes"

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

# A store made in another checkout names its artifacts (./mlruns there) by that checkout's
# absolute path: rewrite them to this one's. $1: the SQLite file, $2: the Python to use.
relocate() {
  "$2" - "$1" <<'EOF'
import os, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
(root,) = db.execute("SELECT artifact_location FROM experiments WHERE experiment_id = 0").fetchone()
old, new = root.removeprefix("file://").rsplit("/mlruns", 1)[0], os.getcwd()
for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
    for _, column, kind, *_ in db.execute(f"PRAGMA table_info({table})").fetchall():
        if old != new and kind.upper().startswith(("TEXT", "VARCHAR")):
            db.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) "
                       f"WHERE {column} LIKE ?", (old, new, f"%{old}%"))
db.commit()
print(f"artifact paths: {old} -> {new}")
EOF
}

unpack() {
  local dir=${1:?unpack needs the folder the files of the device call came back in}
  [ -e mlflow.db ] && { echo "./mlflow.db exists: move it away first" >&2; exit 2; }
  cat "$dir"/store.tar.gz.part-* | tar -xzf -
  relocate mlflow.db .venv/bin/python
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

# The study from scratch: min_params_94 as its sweep file has it but the finalists' budgets
# (STUDY_BUDGETS, the 500 k target's first) and trial models (not logged: the store must come
# back in one call), WORKERS workers sharing the GPU, searching for SEARCH_S seconds; the
# command is interrupted (SIGINT: the sweep's own clean stop) at STUDY_S, so what it did comes
# back and the next call's `study` resumes it. SMOKE=1: a few trials on 2 % of the images, to
# check this end to end on a CPU.
export STUDY_S=${STUDY_S:-500} SEARCH_S=${SEARCH_S:-300} WORKERS=${WORKERS:-8}
export STUDY_BUDGETS=${STUDY_BUDGETS:-[500000]}

study() {
  setup
  local out=${OUT:-outputs/gpu_study_out} dir=outputs/gpu_study
  mkdir -p "$out" "$dir"
  [ -e "$dir/mlflow.db" ] && relocate "$dir/mlflow.db" "$py"  # carried from an earlier call
  export MLFLOW_TRACKING_URI=sqlite:///$PWD/$dir/mlflow.db
  local args=(sweep=min_params_94 "workers=$WORKERS" "output_dir=$dir" runtime.progress_bar=false
    "sweep.finalists.budgets=$STUDY_BUDGETS" sweep.log_models=false
    "sweep.budget.timeout_s=$SEARCH_S")
  if [ "${SMOKE:-0}" = 1 ]; then
    args+=(sweep.budget.train_fraction=0.02 sweep.budget.n_trials=4
      "sweep.fidelity={min_epochs:1,max_epochs:3,eta:3}" sweep.finalists.epochs=3
      sweep.finalists.seeds=1
      'sweep.finalists.overrides=["data.val_size=0","data.train_fraction=0.02","test=true","log_model=true"]')
  else
    args+=(trainer.accelerator=gpu trainer.precision=bf16-mixed)
  fi
  local left=$((STUDY_S - (SECONDS - t0))) rc=0
  echo "the study: ${args[*]}; stopped at +$STUDY_S s"
  timeout -s INT -k 60 "$left" "$py" -m fmnist_lab.sweep "${args[@]}" >"$dir/sweep.log" 2>&1 \
    || rc=$?
  tail -n 25 "$dir/sweep.log"
  case $rc in
    0) echo "the study ended" ;;
    124 | 130) echo "the study stopped at the time limit; the next call resumes it" ;;
    *) echo "the sweep failed (exit $rc): its log above" >&2 ;;
  esac
  # What ran, small enough to commit at once: the report's table and every trial.
  "$py" -m fmnist_lab.report --study min_params_94 --format markdown --no-log \
    --output "$out/report" >"$out/study.txt" 2>&1 || true
  "$py" - "$dir/optuna.journal" >>"$out/study.txt" 2>&1 <<'EOF' || true
import sys, optuna
storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(sys.argv[1]))
study = optuna.load_study(study_name="min_params_94", storage=storage)
print("\ntrial state params val_acc (top rung reached) overrides")
for t in study.trials:
    a = t.user_attrs
    print(t.number, t.state.name, a.get("params"), a.get("val_acc"), " ".join(a.get("overrides", [])))
EOF
  tar -czf - "$dir" $([ -d mlruns ] && echo mlruns) | split -b 15M - "$out/study.tar.gz.part-"
  ls -l "$out"
  echo "ended at +$((SECONDS - t0)) s"
}

unstudy() {
  local dir=${1:?unstudy needs the folder the files of the device call came back in}
  [ -e outputs/gpu_study ] && { echo "outputs/gpu_study exists: move it away first" >&2; exit 2; }
  cat "$dir"/study.tar.gz.part-* | tar -xzf -
  relocate outputs/gpu_study/mlflow.db .venv/bin/python
  .venv/bin/python -m fmnist_lab.report --study min_params_94 --no-log \
    --tracking-uri "sqlite:///$PWD/outputs/gpu_study/mlflow.db"
}

case ${1:-} in
  fetch) fetch ;;
  run) run ;;
  unpack) unpack "${2:-}" ;;
  study) study ;;
  unstudy) unstudy "${2:-}" ;;
  *) echo "usage: bash docs/gpu_session.sh fetch | run | unpack DIR | study | unstudy DIR" >&2
     exit 2 ;;
esac
