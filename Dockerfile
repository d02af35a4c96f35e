# The image of docker-compose.yml's mlflow, optuna-dashboard and worker services. It runs the
# README's set-up step, `make venv` (a virtual environment with this package and its
# dependencies), so the container runs what a checkout runs. torch comes from PyPI as its
# regular CUDA build: the same image trains on the CPU and, under the gpu profile, on GPUs.
FROM python:3.11-slim-bookworm

RUN apt-get update \
    && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY Makefile pyproject.toml README.md ./
COPY fmnist_lab/ fmnist_lab/
COPY conf/ conf/
COPY sweeps/ sweeps/
RUN make venv PYTHON=python3 && rm -rf /root/.cache/pip

ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    FMNIST_LAB_CACHE=/cache

CMD ["python", "-m", "fmnist_lab.sweep", "sweep=quick"]
