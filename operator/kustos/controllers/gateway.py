"""Whether the cluster serves the Gateway API's HTTPRoute: looked up once per process, at
start-up, through discovery, and kept in kopf's memo.

With it, a ModelDeployment's spec.gateway becomes an HTTPRoute (render/httproute.py) and
HTTPRoutes are one more child kind (watched, listed, deleted when no longer rendered);
without it spec.gateway renders nothing and a canary keeps the replica-ratio split
(status.canary.trafficSplit: replicas). A CRD installed later is seen after a restart of
the operator.
"""

from __future__ import annotations

import logging
from typing import Any

import urllib3

from kustos.k8s import client
from kustos.k8s.client import ApiError
from kustos.k8s.config import ConfigError

log = logging.getLogger(__name__)

GROUP_VERSION = "gateway.networking.k8s.io/v1"
PLURAL = "httproutes"


def detect() -> bool:
    """Whether the API server serves httproutes in gateway.networking.k8s.io/v1."""
    try:
        served = client.served_resources(GROUP_VERSION)
    except ApiError as err:
        # Discovery is open to every authenticated user; a failure here is the apiserver's.
        log.warning("Gateway API discovery failed (%s); going on without HTTPRoutes",
                    err.message)
        return False
    except (ConfigError, OSError, urllib3.exceptions.HTTPError) as err:
        # No cluster to reach (no kubeconfig, connection refused): this runs in a startup
        # handler, which kopf would retry forever; going on lets kopf's own login report
        # the problem and stop.
        log.warning("Gateway API discovery impossible (%s); going on without HTTPRoutes",
                    type(err).__name__)
        return False
    return served is not None and PLURAL in served


def gateway_api(memo: Any) -> bool:
    """The answer of :func:`detect`, looked up by the first caller and kept in ``memo``."""
    found = getattr(memo, "kustos_gateway_api", None)
    if found is None:
        found = memo.kustos_gateway_api = detect()
        log.info("Gateway API (HTTPRoute %s): %s", GROUP_VERSION,
                 "served: spec.gateway renders HTTPRoutes" if found
                 else "not served: canaries split by replica ratio")
    return bool(found)
