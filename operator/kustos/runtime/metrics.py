"""Prometheus plumbing the three pod processes share; their metrics are their own.

Importing this imports prometheus_client, which reads PROMETHEUS_MULTIPROC_DIR: `kustos
serve` imports it only in its workers, after the directory is chosen.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series double the scrape size and nobody charts them


def own_registry() -> CollectorRegistry:
    """A registry apart from the default one: only this process's series, no name clash."""
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry = REGISTRY) -> tuple[bytes, str]:
    """The /metrics body and content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST
