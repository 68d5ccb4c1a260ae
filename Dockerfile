# syntax=docker/dockerfile:1
# DESDnet video anomaly detection service.
#
#   CPU (default):  docker build -t desdnet-vad .
#   CUDA:           docker build -t desdnet-vad:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 .
#   Run:            docker run -p 8000:8000 -v "$PWD/weights:/app/weights:ro" desdnet-vad
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEBIAN_FRONTEND=noninteractive \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# python3 is there on python:* bases; CUDA (Ubuntu) bases get Debian/Ubuntu's python3 + venv.
# PyAV and OpenCV wheels bundle their own FFmpeg: no system codecs needed.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null || ! python3 -c "import venv, ensurepip" 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && groupadd --system --gid 10001 vad \
    && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin vad

WORKDIR /app

# torch first, from the index that matches the base (CPU wheel by default), so nothing pulls CUDA.
# Then a constraints file pins the exact build installed, local label included (torch==2.13.0+cpu, or
# +cu126): pyproject's torch==2.13.0 is already met by it (PEP 440 ignores a local label the specifier
# lacks), so pip keeps it; but were anything in the next resolve to ask for another torch, pip would
# fetch PyPI's, whose Linux wheel is the CUDA build with gigabytes of nvidia-* wheels. The constraint
# only the installed wheel meets turns that into a failed build instead. (Not --no-deps: that would
# skip every other dependency too.)
RUN pip install --index-url "$TORCH_INDEX_URL" "torch==${TORCH_VERSION}" \
    && python -c "import torch; print('torch==' + torch.__version__)" > "$VIRTUAL_ENV/torch-constraint.txt"

COPY pyproject.toml README.md ./
COPY model/ model/
COPY service/ service/
# [fast]: onnxruntime and openvino (+ onnx, nncf) for --backend onnxruntime/openvino/auto.
# bench/ (offline tooling) is not in the build context: setuptools' include of bench* then finds nothing.
RUN pip install --constraint "$VIRTUAL_ENV/torch-constraint.txt" ".[fast]" \
    && python -c "import av, cv2, torch, onnx, onnxruntime, openvino, nncf, service.sources" \
    && mkdir -p /app/.cache/vad /app/data \
    && chown -R 10001:10001 /app/.cache /app/data

COPY --chown=10001:10001 weights/ weights/

ENV VAD_HOST=0.0.0.0 \
    VAD_PORT=8000 \
    VAD_WEIGHTS=/app/weights/ped2-lite.safetensors \
    VAD_MODELS_DIR=/app/weights \
    VAD_DATA_DIR=/app/data \
    VAD_CACHE_DIR=/app/.cache/vad

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('VAD_PORT', '8000'), timeout=4)"]

CMD ["vad", "serve"]
