# syntax=docker/dockerfile:1
# Kiln's images: one package, two bases.
#   docker build --target api    -t kiln-api .     # API, webhooks worker, Flower: slim, CPU torch
#   docker build --target worker -t kiln-worker .  # GPU workers: CUDA runtime base
# Both run as the unprivileged user "kiln"; weights go to HF_HOME=/var/cache/kiln/hf
# (mount a volume there), the models file is read from KILN_MODELS_FILE.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
# The worker's torch build (it brings its own CUDA libraries, whatever the base image
# has): cu128 matches the base image and runs on driver R570+; cu126 on R525+; cu130 (and
# "pypi", PyPI's default wheel, a CUDA 13 build) needs R580+. deploy/README.md has the table.
#   docker build --target worker --build-arg TORCH_CUDA=cu126 -t kiln-worker .
ARG TORCH_CUDA=cu128

# -- the package, built once as a wheel ------------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY setup.cfg pyproject.toml README.md ./
COPY app ./app
COPY tasks ./tasks
COPY pipelines ./pipelines
COPY config ./config
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# -- API, webhooks worker and Flower: no GPU, so torch's CPU build -----------------------
FROM ${PYTHON_IMAGE} AS api
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/var/cache/kiln/hf KILN_DATA_DIR=/var/lib/kiln
COPY --from=wheel /wheels /wheels
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu /wheels/kiln-*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /home/kiln kiln \
    && mkdir -p /var/cache/kiln/hf /var/lib/kiln \
    && chown -R kiln:kiln /var/cache/kiln /var/lib/kiln
USER kiln
WORKDIR /home/kiln
EXPOSE 8000 5555
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"
CMD ["gunicorn", "-c", "python:config.gunicorn", "--workers", "4", "-b", "0.0.0.0:8000", "app:create_app()"]

# -- GPU workers: one process per GPU, `kiln worker --model NAME --gpu I` -------------------
FROM ${CUDA_IMAGE} AS worker
ARG TORCH_CUDA
# gcc and the Python headers: torch.compile (inductor, Triton) builds its launchers with
# them at run time. Its caches live under /var/lib/kiln/inductor (mount a volume there).
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive \
    HF_HOME=/var/cache/kiln/hf KILN_DATA_DIR=/var/lib/kiln \
    TORCHINDUCTOR_CACHE_DIR=/var/lib/kiln/inductor \
    PATH=/opt/kiln/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/kiln
COPY --from=wheel /wheels /wheels
RUN if [ "$TORCH_CUDA" = pypi ]; then index=""; \
    else index="--extra-index-url https://download.pytorch.org/whl/$TORCH_CUDA"; fi \
    && pip install $index /wheels/kiln-*.whl \
    && python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home --home-dir /home/kiln kiln \
    && mkdir -p /var/cache/kiln/hf /var/lib/kiln/inductor \
    && chown -R kiln:kiln /var/cache/kiln /var/lib/kiln
USER kiln
WORKDIR /home/kiln
EXPOSE 9100
# The worker's Prometheus port answers from before the model loads until it stops.
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=4)"
CMD ["kiln", "worker", "--model", "sd15", "--gpu", "0", "--metrics-port", "9100"]
