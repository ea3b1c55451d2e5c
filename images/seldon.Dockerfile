# syntax=docker/dockerfile:1
#
# The Seldon runtime image (runtime kind `seldon`): seldon-core's Python wrapper
# (seldon-core-microservice) serving a Kustos-fetched sklearn model through
# operator/kustos/runtime/seldon_adapter.py. It holds seldon-core, numpy, scikit-learn
# and skops (images/seldon-requirements.txt) and the adapter: not Kustos.
#
#   docker build -f images/seldon.Dockerfile -t ghcr.io/kustos-dev/kustos-seldon:0.1.0 .
#
# LICENCE: seldon-core 1.17.1 is the last release under Apache-2.0; 1.18.0 and later are
# under the Business Source License 1.1, not an open-source licence (docs/licenses.md).
#
# Runs as a numeric non-root user with a read-only root filesystem: gunicorn's worker
# heartbeat files and the metrics manager's socket go to TMPDIR=/tmp (an emptyDir).
# Release builds pin BASE by digest: --build-arg BASE=python:3.11-slim-bookworm@sha256:...
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/seldon
COPY images/seldon-requirements.txt /tmp/seldon-requirements.txt
RUN /opt/seldon/bin/pip install -r /tmp/seldon-requirements.txt \
 && /opt/seldon/bin/python -m compileall -q /opt/seldon/lib
# The adapter as a top-level module: the rendered class is
# kustos_seldon_adapter.KustosSeldonModel (kustos.render.runtimes.SELDON_ADAPTER_CLASS).
COPY operator/kustos/runtime/seldon_adapter.py /opt/seldon/adapter/kustos_seldon_adapter.py
RUN /opt/seldon/bin/python -m compileall -q /opt/seldon/adapter \
 && PYTHONPATH=/opt/seldon/adapter /opt/seldon/bin/python -c \
      "import kustos_seldon_adapter, seldon_core.microservice"

FROM ${BASE}
LABEL org.opencontainers.image.title="kustos-seldon" \
      org.opencontainers.image.description="seldon-core-microservice with the Kustos sklearn adapter" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/seldon /opt/seldon
ENV PATH=/opt/seldon/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONPATH=/opt/seldon/adapter \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODEL_DIR=/mnt/models
USER 65532:65532
WORKDIR /tmp
# REST, gRPC, Prometheus metrics
EXPOSE 9000 5000 6000
ENTRYPOINT ["seldon-core-microservice"]
CMD ["kustos_seldon_adapter.KustosSeldonModel", "--service-type", "MODEL"]
