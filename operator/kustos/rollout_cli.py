"""`kustos rollout status|promote|abort|pause|resume NAME [-n NS]`: watch and steer a
ModelDeployment's gated rollout (spec.rollout).

status prints status.rollout: phase, step, weight, the stable and candidate versions and
the last analysis, gate by gate. The actions set the annotation kustos.dev/rollout-action,
which the operator applies at its next look (within seconds), records in
status.rollout.lastAction and removes: `kubectl annotate md NAME
kustos.dev/rollout-action=promote` does the same.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

KIND = "ModelDeployment"
ACTION = "kustos.dev/rollout-action"
ACTIONS = ("promote", "abort", "pause", "resume")


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def describe(md: Mapping[str, Any]) -> str:
    """The rollout of ``md`` in words and a table (pure)."""
    meta = md["metadata"]
    spec = md.get("spec") or {}
    st = (md.get("status") or {}).get("rollout") or {}
    name = f"{meta.get('namespace')}/{meta['name']}"
    if not spec.get("rollout"):
        return f"{name} has no spec.rollout"
    if not st:
        return f"{name}: no rollout recorded yet"
    steps = st.get("steps") or len(spec["rollout"].get("steps") or [])
    lines = [f"ModelDeployment {name}",
             f"  phase:     {st.get('phase', 'Idle')}"]
    if st.get("step"):
        lines.append(f"  step:      {st['step']}/{steps}")
    lines.append(f"  weight:    {st.get('weight', 0)}%")
    for role in ("stable", "candidate"):
        ref = st.get(role) or {}
        if ref:
            lines.append(f"  {role + ':':<10} version {ref.get('version', '?')} "
                         f"({ref.get('uri', '?')})")
    if st.get("stepStartedAt"):
        lines.append(f"  since:     {st['stepStartedAt']}")
    if st.get("message"):
        lines.append(f"  message:   {st['message']}")
    analysis = st.get("lastAnalysis") or {}
    if analysis:
        lines += ["", f"last analysis {analysis.get('time', '?')}: "
                      f"{analysis.get('verdict', '?')}"]
        rows = [("METRIC", "STABLE", "CANDIDATE", "VALUE", "THRESHOLD", "SAMPLES", "VERDICT")]
        for metric, m in sorted((analysis.get("metrics") or {}).items()):
            rows.append((metric, _num(m.get("stable")), _num(m.get("candidate")),
                         _num(m.get("value")), _num(m.get("threshold")),
                         _num(m.get("samples")), str(m.get("verdict", "?"))
                         + (f" ({m['reason']})" if m.get("reason") else "")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for r in rows:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
                         + "  " + r[-1])
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kustos rollout",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("command", choices=("status", *ACTIONS))
    p.add_argument("name", help="the ModelDeployment")
    p.add_argument("-n", "--namespace", default=None,
                   help="its namespace (default: the kubeconfig context's)")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    args = p.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    from kustos.governance.inventory import get_model_deployment
    from kustos.k8s import client

    namespace = args.namespace
    try:
        namespace, md = get_model_deployment("kustos rollout", args.name, namespace)
        if md is None:
            return 1
        if args.command == "status":
            print(describe(md))
            return 0
        if not (md.get("spec") or {}).get("rollout"):
            print(f"kustos rollout: {namespace}/{args.name} has no spec.rollout",
                  file=sys.stderr)
            return 1
        client.patch(KIND, args.name, namespace,
                     {"metadata": {"annotations": {ACTION: args.command}}})
    except client.ApiError as err:
        print(f"kustos rollout: {err.message}", file=sys.stderr)
        return 1
    print(f"{args.command} requested for {namespace}/{args.name} "
          f"(annotation {ACTION}; `kustos rollout status {args.name}` shows the outcome)")
    return 0
