# Qwen-Image Discord bot for a CUDA host.
#   docker build -t imagine .
#   docker run --gpus all --env-file .env -v imagine-data:/data imagine           # the bot
#   docker run --gpus all --env-file .env -v imagine-data:/data imagine python -m engine.worker
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/data/hf-cache \
    IMAGINE_HF_CACHE_DIR=/data/hf-cache \
    IMAGINE_COMPILE_CACHE_DIR=/data/compile-cache \
    TORCHINDUCTOR_CACHE_DIR=/data/compile-cache \
    IMAGINE_DATABASE_URL=sqlite+aiosqlite:////data/imagine.db \
    IMAGINE_HEALTH_PORT=8080

RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential curl \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv

WORKDIR /app
# Dependencies first so code changes do not re-download torch. torch is unpinned here on
# purpose: pip picks the CUDA build that matches this image.
COPY pyproject.toml README.md ./
RUN mkdir -p bot engine db && touch bot/__init__.py engine/__init__.py db/__init__.py \
    && pip install . && pip uninstall -y qwen-imagine-bot
COPY bot ./bot
COPY engine ./engine
COPY db ./db
RUN pip install --no-deps .

RUN useradd --create-home --uid 10001 imagine \
    && mkdir -p /data && chown imagine:imagine /data
USER imagine
# Model weights, the compile cache and the SQLite database live here.
VOLUME ["/data"]
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${IMAGINE_HEALTH_PORT}/healthz" || exit 1

CMD ["python", "-m", "bot"]
