# The InternVideo-on-Ray image: the coordinator (`internvideo serve`), and the Ray head and workers of
# deploy/kuberay/ run from this one image, because Ray needs the same Python and Ray versions on
# every node and in the driver, and the workers import this repository's code.
#
#   docker build -t internvideo:0.1.0 .                                                  # CUDA (GPU nodes)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t internvideo:cpu .
#
# No CUDA base image: PyTorch's CUDA wheels bring the CUDA runtime, cuDNN and NCCL as pip packages,
# and the GPU driver comes from the node (NVIDIA container toolkit). Nothing here compiles CUDA code
# (the optimiser is torch's AdamW, not a DeepSpeed JIT op). No ffmpeg either: the decord and PyAV
# wheels carry their own.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    RAY_USAGE_STATS_ENABLED=0

# bash and wget: KubeRay starts Ray through `bash -lc` and its default Ray probes call wget.
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash wget \
    && rm -rf /var/lib/apt/lists/*

# torch first, from the index that has the wanted build: the pyproject's `torch>=2.4` is then
# already met, so the next step does not pull PyPI's default build over it.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

COPY pyproject.toml README.md /tmp/src/
COPY coordinator /tmp/src/coordinator
COPY workers /tmp/src/workers
COPY internvideo /tmp/src/internvideo
COPY protos /tmp/src/protos
RUN pip install /tmp/src && rm -rf /tmp/src

# uid 1000 matches runAsUser/fsGroup in deploy/kuberay/. /state: deploy/local/compose.yaml mounts a
# named volume there, which takes this folder's owner when first created.
RUN useradd --uid 1000 --create-home --shell /bin/bash internvideo \
    && mkdir /state && chown internvideo:internvideo /state
USER 1000
WORKDIR /home/internvideo

# gRPC API, coordinator metrics (/metrics, /targets), Ray's metrics export (Ray pods).
EXPOSE 50051 9464 8080
# KubeRay replaces the command of Ray's containers with its own `ray start`; the coordinator's
# Deployment and deploy/local/compose.yaml run this entrypoint.
ENTRYPOINT ["internvideo"]
CMD ["serve", "--listen", "0.0.0.0:50051"]
