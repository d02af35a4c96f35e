# Set-up and the everyday commands. Every target creates or updates .venv itself.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/fmnist-lab

# Offline machines keep the genuine datasets beside the checkout; online, torchvision
# downloads them instead. An FMNIST_LAB_DATA already set wins.
SHARED_DATA := $(abspath ../shared/data)
ifneq ($(wildcard $(SHARED_DATA)/fashion-mnist/*.gz),)
export FMNIST_LAB_DATA ?= $(SHARED_DATA)
endif

.PHONY: venv run report screenshots server train test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

## The main job: the quick sweep on the real Fashion-MNIST, tracked in ./mlflow.db, then
## its comparison report (table, params-vs-accuracy plot, importances) in outputs/reports/.
STUDY ?= quick
run: venv
	$(CLI) sweep sweep=quick workers=2 study_name=$(STUDY) $(ARGS)
	$(CLI) report --study $(STUDY) $(REPORT_ARGS)

## The comparison report of a study or experiment, e.g. make report ARGS="--study quick".
report: venv
	$(CLI) report $(ARGS)

## Screenshots of the MLflow UI on the make-run store (needs: apt-get install chromium).
screenshots: venv
	$(PY) -m pip install --quiet -e ".[docs]"
	$(PY) docs/screenshots.py --tracking-uri sqlite:///mlflow.db --experiment $(STUDY) --out docs/img

## An MLflow tracking server on 127.0.0.1:5000 (SQLite ./mlflow.db, artifacts proxied into
## ./mlartifacts); e.g. make server ARGS="--host 0.0.0.0 --backend-store-uri postgresql://...".
server: venv
	$(CLI) server $(ARGS)

## One training run of the default CNN (3 epochs).
train: venv
	$(CLI) train trainer.max_epochs=3 $(ARGS)

## Lint, then the whole test suite (real data, real MLflow stores; CPU only). docs/testing.md
test: venv lint
	$(PY) -m pytest $(PYTEST_ARGS)

## Lint, then the fast tier: unit tests on small generated data, no services (about 3 min).
test-fast: venv lint
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

## Training throughput: Lightning path vs plain loop vs DataLoader (docs/benchmarks.md).
bench: venv
	$(CLI) bench --model convnet_20k convnet_100k conv2dsimple2 --repeat 2 \
		--precision 32-true bf16-mixed --sweep quick $(ARGS)

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache
