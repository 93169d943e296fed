# CPU image of the detector and the trainer. Build: docker build -t logad .
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app
# CPU-only torch from the PyTorch CPU index keeps the image small (no CUDA libraries); the GPU override builds with
# TORCH_INDEX_URL=https://download.pytorch.org/whl/cu124 instead.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.2"
COPY pyproject.toml README.md ./
COPY logbert_core ./logbert_core
COPY streamer ./streamer
COPY training ./training
RUN pip install .
COPY config ./config
COPY models ./models
RUN useradd --system --uid 10001 logad
USER logad
EXPOSE 8080
ENTRYPOINT ["logad"]
CMD ["run", "--config", "config/hdfs.toml", "--model", "models/hdfs"]
