# syntax=docker/dockerfile:1
#
# The drift sidecar image (`kustos drift`): alibi-detect and the CPU-only TensorFlow build
# (for mmd) from the exact lock images/drift-requirements.txt, then the kustos wheel. Its
# own image because alibi-detect needs numpy < 2 (the main image and the explainer's have
# numpy 2). alibi-detect 0.11.4 is its last Apache-2.0 release; 0.11.5 and later are under
# the Business Source License 1.1 (docs/licenses.md).
#
#   python -m build --wheel            # -> dist/kustos-<version>-py3-none-any.whl
#   docker build -f images/drift.Dockerfile -t ghcr.io/kustos-dev/kustos-drift:0.1.0 .
#
# Runs as a numeric non-root user with a read-only root filesystem: the reference is
# downloaded to /tmp/drift (an emptyDir in the pod).
# Release builds pin BASE by digest: --build-arg BASE=python:3.11-slim-bookworm@sha256:...
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/kustos
COPY images/drift-requirements.txt /tmp/drift-requirements.txt
COPY images/prune.py /tmp/prune.py
# Every package is pinned in the lock, transitive ones included: --no-deps (see its header).
# Then what the image never runs (the test suites): the same script as make images.
RUN /opt/kustos/bin/pip install --no-deps -r /tmp/drift-requirements.txt && \
    /opt/kustos/bin/python /tmp/prune.py /opt/kustos tests
COPY dist/ /tmp/dist/
RUN set -eu; \
    set -- /tmp/dist/kustos-*.whl; \
    [ "$#" -eq 1 ] && [ -f "$1" ] || { echo "need exactly one kustos wheel in dist/" >&2; exit 1; }; \
    /opt/kustos/bin/pip install --no-deps "$1"; \
    /opt/kustos/bin/python -c "import alibi_detect, kustos.runtime.drift.cli"; \
    # Byte-compile now: at run time the root filesystem is read-only.
    /opt/kustos/bin/python -m compileall -q /opt/kustos/lib

FROM ${BASE}
LABEL org.opencontainers.image.title="kustos-drift" \
      org.opencontainers.image.description="Kustos drift sidecar (alibi-detect)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/kustos /opt/kustos
ENV PATH=/opt/kustos/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/tmp \
    TMPDIR=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HOME=/tmp/huggingface \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    KUSTOS_DRIFT_DIR=/tmp/drift
# The operator renders command ["kustos"] and args ["drift", ...].
USER 65532:65532
WORKDIR /tmp
EXPOSE 8091
ENTRYPOINT ["kustos"]
CMD ["drift", "--help"]
