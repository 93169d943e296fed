# One Dockerfile, one image per role; the extras pick the role's dependencies (pyproject.toml):
#   docker build -t logad .                                  detector: logad run / replay / tail / doctor / alerts
#   docker build --build-arg EXTRAS=serve -t logad-serve .   + fastapi, uvicorn for `logad serve`
#   docker build --build-arg EXTRAS=train -t logad-train .   + scikit-learn, matplotlib for logad-train
# docker-compose.yml builds all three. tests/test_deploy.py replays the COPY lines below into an empty folder and
# builds the package from it, so a folder that pyproject lists but no COPY brings in fails CI, not the image build.
FROM python:3.11-slim

# torch is pinned here (pyproject only says >=2.2) and comes first, from the CPU index: no CUDA libraries. The GPU
# override (docker-compose.gpu.yml) sets TORCH_INDEX_URL=https://pypi.org/simple, whose Linux wheels of the same
# version are CUDA builds; keep TORCH_VERSION equal to the version the tests run (scripts/setup.sh).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Comma-separated extras of logad to install beside the core (empty: the detector alone).
ARG EXTRAS=

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

# Every package [tool.setuptools] packages lists, and the files its metadata reads (readme).
COPY pyproject.toml README.md ./
COPY logbert_core ./logbert_core
COPY streamer ./streamer
COPY training ./training
COPY benchmarks ./benchmarks
# torch named again with its pin, so resolving the extras can never replace the wheel installed above.
RUN pip install "torch==${TORCH_VERSION}" ".${EXTRAS:+[${EXTRAS}]}" && rm -rf build ./*.egg-info

# Data the commands name (CMD below, the compose services): the log-family configs and the bundled model.
COPY config ./config
COPY models ./models
LABEL org.opencontainers.image.title="logad" \
      org.opencontainers.image.description="Streaming log anomaly detection (Kafka, Drain3, Redis, LogBERT)"
RUN useradd --system --uid 10001 logad
USER logad
EXPOSE 8080
ENTRYPOINT ["logad"]
CMD ["run", "--config", "config/hdfs.toml", "--model", "models/hdfs"]
