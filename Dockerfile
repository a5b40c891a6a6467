# syntax=docker/dockerfile:1
#
# One image for every deepfeat worker (planner, extractor, trainer, evaluator) and the CLI.
# The command picks the role: `npx tsx cli/main.ts worker <kind>` (see docker-compose.yml).
#
# CPU (default):
#   docker build -t deepfeat:cpu .
# GPU hosts: the default engine, ONNX Runtime, runs on the GPU through its CUDA provider, which
# onnxruntime-node >= 1.23 builds against CUDA 12 / cuDNN 9, so the base image must carry those
# libraries (the host needs only the NVIDIA driver and the NVIDIA container toolkit). Node is
# copied in from the official image, so any glibc-based base works:
#   docker build -t deepfeat:gpu \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04 \
#     --build-arg ONNXRUNTIME_CUDA=1 .
# (@tensorflow/tfjs-node-gpu, the TF.js GPU path, needs CUDA 11 / cuDNN 8 instead:
#  BASE_IMAGE=nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04 with DEEPFEAT_ENGINE=tfjs.)
# If the CUDA provider cannot start, the extractor logs why and runs on the CPU.
#
# Build args:
#   BASE_IMAGE        runtime base image (default node:20-bookworm-slim)
#   NODE_IMAGE        where node and npm come from (default node:20-bookworm-slim)
#   ONNXRUNTIME_CUDA  1 = let onnxruntime-node download its CUDA provider during npm ci (the
#                     repo's .npmrc skips that download for CPU builds and offline machines)

ARG NODE_IMAGE=node:20-bookworm-slim
ARG BASE_IMAGE=node:20-bookworm-slim

# --- node: the Node.js runtime, whatever the base ---------------------------------------------
FROM ${NODE_IMAGE} AS node

# --- deps: install node_modules with the tools native addons may need -------------------------
FROM ${BASE_IMAGE} AS deps
ARG ONNXRUNTIME_CUDA=0
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
# Node's headers, so node-gyp builds native/jpeg without downloading them.
COPY --from=node /usr/local/include/node /usr/local/include/node
ENV npm_config_nodedir=/usr/local
RUN ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates python3 make g++ libjpeg-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY package.json package-lock.json .npmrc ./
# npm ci's postinstall builds deepfeat's libjpeg-turbo JPEG decoder (native/jpeg) with node-gyp;
# on a base without libjpeg-turbo's headers it says so and JPEGs go through sharp instead.
COPY native ./native
# Optional dependencies (@tensorflow/tfjs-node-gpu) install where their downloads are reachable;
# where not, npm ci still succeeds without them and the extractor falls back to another engine.
RUN if [ "$ONNXRUNTIME_CUDA" = "1" ]; then sed -i '/^onnxruntime-node-install=/d' .npmrc; fi \
 && npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force

# --- runtime -------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS runtime
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -sf ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -sf ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates \
 && (DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libjpeg62-turbo \
     || DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libjpeg-turbo8) \
 && rm -rf /var/lib/apt/lists/* \
 && (getent group deepfeat || groupadd --system --gid 10001 deepfeat) \
 && (id -u deepfeat || useradd --system --uid 10001 --gid deepfeat --home-dir /app --shell /usr/sbin/nologin deepfeat)

WORKDIR /app
ENV NODE_ENV=production \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_CACHE=/tmp/.npm
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --from=deps --chown=root:root /app/native ./native
COPY --chown=root:root package.json package-lock.json .npmrc tsconfig.json ./
COPY --chown=root:root bin ./bin
COPY --chown=root:root cli ./cli
COPY --chown=root:root shared ./shared
COPY --chown=root:root services ./services

# Code is owned by root and read-only to the worker; workers keep nothing on local disk.
USER deepfeat
CMD ["npx", "tsx", "cli/main.ts", "--help"]
