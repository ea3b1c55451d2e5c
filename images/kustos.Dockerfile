# syntax=docker/dockerfile:1
#
# The Kustos image: the operator (`kustos run`), the fetch init container (`kustos fetch`)
# and the model server (`kustos serve`), from one wheel with the [serve] extra; with
# EXTRAS=explain, the explainer sidecar's image (`kustos explain`, adds shap).
# Dependencies are pinned by requirements/constraints.txt, as in `make venv` and in the
# registry-less build (`make images`, images/images.toml; tests/images checks they agree).
#
#   python -m build --wheel            # -> dist/kustos-<version>-py3-none-any.whl
#   docker build -f images/kustos.Dockerfile -t ghcr.io/kustos-dev/kustos:0.1.0 .
#   docker build -f images/kustos.Dockerfile --build-arg EXTRAS=explain \
#     --build-arg TITLE=kustos-explain -t ghcr.io/kustos-dev/kustos-explain:0.1.0 .
#
# Runs as a numeric non-root user and with a read-only root filesystem: nothing is
# written outside /tmp (an emptyDir in the pod) and the model directory /mnt/models.
# Release builds pin BASE by digest: --build-arg BASE=python:3.11-slim-bookworm@sha256:...
ARG BASE=python:3.11-slim-bookworm

ARG EXTRAS=serve
ARG TITLE=kustos

FROM ${BASE} AS build
ARG EXTRAS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kustos
COPY requirements/constraints.txt /tmp/constraints.txt
COPY images/prune.py /tmp/prune.py
COPY dist/ /tmp/dist/
# Exactly one wheel is expected in dist/: fail rather than pick one at random.
RUN set -eu; \
    set -- /tmp/dist/kustos-*.whl; \
    [ "$#" -eq 1 ] && [ -f "$1" ] || { echo "need exactly one kustos wheel in dist/" >&2; exit 1; }; \
    /opt/kustos/bin/pip install -c /tmp/constraints.txt "$1[${EXTRAS}]"; \
    # What the image never runs (the test suites, onnxruntime's C API library) and the
    # shared objects' symbols: the same script as make images (strip needs binutils).
    apt-get update -qq; apt-get install -y -qq --no-install-recommends binutils >/dev/null; \
    /opt/kustos/bin/python /tmp/prune.py /opt/kustos tests pip ort strip; \
    # Byte-compile now: at run time the root filesystem is read-only.
    /opt/kustos/bin/python -m compileall -q /opt/kustos/lib

FROM ${BASE}
ARG TITLE
LABEL org.opencontainers.image.title="${TITLE}" \
      org.opencontainers.image.description="Kustos operator, model fetcher and model server" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kustos /opt/kustos
# lightgbm's wheel links OpenMP (libgomp.so.1) from the system; the slim base lacks it.
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/kustos/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/mnt/models
# 65532: the conventional "nonroot" uid/gid; the Deployment renderer uses the same.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080
# Render passes `kustos` as command for the server; the fetch init container and the
# operator pass args only, so the entrypoint must be kustos.
ENTRYPOINT ["kustos"]
CMD ["--help"]
