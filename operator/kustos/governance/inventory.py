"""`kustos status`: an inventory of every ModelDeployment the caller can see.

One row per ModelDeployment: namespace, name, version, ready, drift (the DriftDetected
condition of the DriftMonitor targeting it), owner, risk tier and policy compliance.
Reads with the caller's own kubeconfig (or in-cluster credentials), as kubectl does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

COLUMNS = ("NAMESPACE", "NAME", "VERSION", "READY", "DRIFT", "OWNER", "RISK", "COMPLIANT")


def _condition(obj: Mapping[str, Any], type_: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return str(cond.get("status"))
    return None


def rows(models: Iterable[Mapping[str, Any]],
         monitors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The inventory (pure): one dict per ModelDeployment, sorted by namespace and name.
    DRIFT is the DriftMonitor's DriftDetected status, '-' without a monitor, and
    'True' if any of several monitors of one model detects drift."""
    drift: dict[tuple[str, str], str] = {}
    for dm in monitors:
        target = ((dm.get("spec") or {}).get("targetRef") or {}).get("name")
        key = (dm["metadata"].get("namespace", ""), str(target))
        value = _condition(dm, "DriftDetected") or "Unknown"
        if drift.get(key) != "True":
            drift[key] = value
    out = []
    for md in models:
        meta, spec = md["metadata"], md.get("spec") or {}
        governance = spec.get("governance") or {}
        status = md.get("status") or {}
        served = (status.get("model") or {}).get("version")
        wanted = (spec.get("model") or {}).get("version", "")
        version = wanted if served in (None, wanted) else f"{served}->{wanted}"
        out.append({
            "NAMESPACE": meta.get("namespace", ""),
            "NAME": meta["name"],
            "VERSION": version,
            "READY": _condition(md, "Ready") or "Unknown",
            "DRIFT": drift.get((meta.get("namespace", ""), meta["name"]), "-"),
            "OWNER": governance.get("owner") or "-",
            "RISK": governance.get("riskTier") or "low",
            "COMPLIANT": _condition(md, "PolicyCompliant") or "-",
        })
    return sorted(out, key=lambda r: (r["NAMESPACE"], r["NAME"]))


def table(items: list[dict[str, str]], columns: tuple[str, ...] = COLUMNS) -> str:
    widths = {c: max([len(c)] + [len(r[c]) for r in items]) for c in columns}
    lines = ["   ".join(c.ljust(widths[c]) for c in columns).rstrip()]
    lines += ["   ".join(r[c].ljust(widths[c]) for c in columns).rstrip() for r in items]
    return "\n".join(lines)


def _current_namespace() -> str:
    """The kubeconfig context's namespace, as kubectl defaults to it."""
    from kustos.k8s import config

    try:
        return config.current_namespace() or "default"
    except config.ConfigError:
        return "default"


def get_model_deployment(prog: str, name: str,
                         namespace: str | None) -> tuple[str, dict[str, Any] | None]:
    """The namespace (``namespace`` or the kubeconfig context's) and the ModelDeployment
    ``name`` in it; None, said on stderr as ``prog``, when it does not exist. Raises
    kustos.k8s.client.ApiError."""
    from kustos.k8s import client

    namespace = namespace or _current_namespace()
    md = client.get("ModelDeployment", name, namespace)
    if md is None:
        print(f"{prog}: ModelDeployment {namespace}/{name} not found", file=sys.stderr)
    return namespace, md


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kustos status", description=__doc__.splitlines()[0])
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", help="only this namespace")
    scope.add_argument("-A", "--all-namespaces", action="store_true",
                       help="every namespace (the default when -n is not given)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    args = p.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    from kustos.k8s import client

    namespace = args.namespace
    try:
        try:
            models = client.list_objects("ModelDeployment", namespace)
        except client.ApiError as err:
            if err.status != 403 or namespace:
                raise
            # Not allowed cluster-wide: show what the caller may see, as kubectl would.
            namespace = _current_namespace()
            print(f"kustos status: cannot list across namespaces ({err.message}); "
                  f"showing namespace {namespace}", file=sys.stderr)
            models = client.list_objects("ModelDeployment", namespace)
        try:
            monitors = client.list_objects("DriftMonitor", namespace)
        except client.ApiError as err:
            if err.status not in (403, 404):
                raise
            monitors = []  # drift unknown rather than no inventory at all
    except client.ApiError as err:
        print(f"kustos status: {err.message}", file=sys.stderr)
        return 1
    items = rows(models, monitors)
    if args.output == "json":
        print(json.dumps(items, indent=2))
    elif items:
        print(table(items))
    else:
        print("No ModelDeployments found.", file=sys.stderr)
    return 0
