# Qwen-Image Discord bot for a CUDA host. Two images from one file:
#   docker build -t imagine .                                   # the bot (default, last stage)
#   docker build --target worker -t imagine-worker .            # a remote GPU worker
#   docker run -d --name imagine --restart unless-stopped --stop-timeout 45 --gpus all \
#     --env-file .env -p 127.0.0.1:8080:8080 -v imagine-data:/data imagine
#   docker run -d --name imagine-gpu0 --restart unless-stopped --stop-timeout 660 \
#     --gpus '"device=0"' --env-file .env -v imagine-data:/data imagine-worker
#   docker compose up -d                                        # the same, from compose.yaml
#
# The image's user is uid 10001: a bind-mounted host folder in place of the /data volume must
# belong to it (chown -R 10001:10001 FOLDER).
#
# The base is pinned by digest (the multi-platform index of this tag), so a rebuild next year
# starts from the same bytes. Python packages come from constraints.txt, the versions the test
# suite ran with; torch is the one package left to pip, which picks the CUDA build for this image.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04@sha256:ac55d124da4882b497f732d8dfd9a702d5447a5f29d08d56da6f64f0a1eb34bc

# ---------------------------------------------------------------- build: compilers live here only
FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, so a code change does not re-download torch.
COPY pyproject.toml README.md constraints.txt ./
RUN mkdir -p bot engine db && touch bot/__init__.py engine/__init__.py db/__init__.py \
    && pip install -c constraints.txt . && pip uninstall -y qwen-imagine-bot
COPY bot ./bot
COPY engine ./engine
COPY db ./db
RUN pip install --no-deps -c constraints.txt .

# ---------------------------------------------------------------- runtime: no compiler, no curl
FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/data/hf-cache \
    IMAGINE_HF_CACHE_DIR=/data/hf-cache \
    IMAGINE_COMPILE_CACHE_DIR=/data/compile-cache \
    TORCHINDUCTOR_CACHE_DIR=/data/compile-cache \
    IMAGINE_DATABASE_URL=sqlite+aiosqlite:////data/imagine.db \
    IMAGINE_IMAGE_DIR=/data/images \
    IMAGINE_HEALTH_HOST=0.0.0.0 \
    IMAGINE_HEALTH_PORT=8080
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/venv /opt/venv
RUN useradd --create-home --uid 10001 imagine \
    && mkdir -p /data && chown imagine:imagine /data
WORKDIR /home/imagine
USER imagine
# Model weights, the compile cache, the image store and the SQLite database live here.
VOLUME ["/data"]

# ---------------------------------------------------------------- a remote GPU worker
FROM runtime AS worker
# /metrics (when IMAGINE_WORKER_METRICS_PORT is set) must listen on the container's interface to
# be published (-p 127.0.0.1:9100:9100); outside a container the worker keeps 127.0.0.1.
ENV IMAGINE_WORKER_METRICS_ADDR=0.0.0.0
# Healthy while the worker's heartbeat to Redis is fresh (it writes a file at every beat). The
# start period covers a first start: downloading both models (~99 GB with editing on, the
# default) at 50 MB/s takes ~33 minutes, then loading and the warm-up image.
HEALTHCHECK --interval=30s --timeout=10s --start-period=2700s --retries=3 \
    CMD ["python", "-m", "engine.worker", "--healthcheck"]
CMD ["python", "-m", "engine.worker"]

# ---------------------------------------------------------------- the bot (default target)
FROM runtime AS bot
EXPOSE 8080
# /healthz answers 503 until the model is loaded; the start period is the worker's (above).
HEALTHCHECK --interval=30s --timeout=5s --start-period=2700s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(0 if urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['IMAGINE_HEALTH_PORT']}/healthz\", timeout=4).status == 200 else 1)"]
CMD ["python", "-m", "bot"]
