"""`kustos rollback NAME [-n NS] [--to VERSION]`: serve a previously deployed version again.

Rolls back through the API: spec.model's version, uri and digest are set from an entry of
status.history (the previous version by default), with a resourceVersion precondition so
a concurrent change is never overwritten, and a RolledBack Event records who did it. The
operator then rolls the pods as for any spec change; the admission webhook judges the
result like any other update. With GitOps, commit the same change to Git, or the next
sync restores what Git says.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from typing import Any

KIND = "ModelDeployment"


class RollbackError(Exception):
    """Why a rollback cannot be done (shown to the user)."""


def plan(md: Mapping[str, Any], to: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(history entry, merge patch of spec.model) to roll ``md`` back (pure). Without
    ``to``, the newest history entry whose version differs from the current one."""
    name = md["metadata"]["name"]
    current = (md.get("spec") or {}).get("model") or {}
    # A rolled-back rollout candidate (event RolledBack) never served every caller: it is
    # no version to return to.
    history = [h for h in (md.get("status") or {}).get("history") or []
               if h.get("version") and not h.get("event")]
    if not history:
        raise RollbackError(f"ModelDeployment {name} has no deployed history to roll back to")
    if to is None:
        entry = next((h for h in history if h["version"] != current.get("version")), None)
        if entry is None:
            raise RollbackError(f"every version in {name}'s history is the current one "
                                f"({current.get('version')})")
    else:
        entry = next((h for h in history if h["version"] == to), None)
        if entry is None:
            known = ", ".join(dict.fromkeys(h["version"] for h in history))
            raise RollbackError(f"version {to} is not in {name}'s history (known: {known})")
    if not entry.get("uri"):
        raise RollbackError(f"the history entry of version {entry['version']} has no uri "
                            "(recorded by an older kustos); edit spec.model instead")
    if (entry["version"], entry.get("uri"), entry.get("digest")) == \
            (current.get("version"), current.get("uri"), current.get("digest")):
        raise RollbackError(f"{name} already specifies version {entry['version']}")
    # digest None removes a digest the newer version had (merge patch semantics).
    model = {"version": entry["version"], "uri": entry["uri"], "digest": entry.get("digest")}
    return entry, {"spec": {"model": model}}


def _whoami() -> str:
    """The caller's user name for the audit Event (SelfSubjectReview), '?' if unknown."""
    from kustos.k8s import client

    try:
        review = client.create({"apiVersion": "authentication.k8s.io/v1",
                                "kind": "SelfSubjectReview", "metadata": {}})
    except client.ApiError:
        return "?"
    return str(((review.get("status") or {}).get("userInfo") or {}).get("username") or "?")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kustos rollback",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("name", help="the ModelDeployment")
    p.add_argument("-n", "--namespace", default=None,
                   help="its namespace (default: the kubeconfig context's)")
    p.add_argument("--to", metavar="VERSION",
                   help="a version from status.history (default: the previous version)")
    p.add_argument("--dry-run", action="store_true", help="say what would change, change nothing")
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)")
    args = p.parse_args(argv)
    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig
    from kustos.governance.inventory import get_model_deployment
    from kustos.k8s import client, events

    namespace = args.namespace
    try:
        namespace, md = get_model_deployment("kustos rollback", args.name, namespace)
        if md is None:
            return 1
        entry, patch = plan(md, args.to)
        was = ((md.get("spec") or {}).get("model") or {}).get("version")
        change = f"version {was} -> {entry['version']} ({entry['uri']})"
        if args.dry_run:
            print(f"would roll back {namespace}/{args.name}: {change}")
            return 0
        client.patch(KIND, args.name, namespace, patch, md["metadata"]["resourceVersion"])
    except RollbackError as err:
        print(f"kustos rollback: {err}", file=sys.stderr)
        return 1
    except client.ApiError as err:
        hint = " (it changed meanwhile; run again)" if err.status == 409 else ""
        print(f"kustos rollback: {err.message}{hint}", file=sys.stderr)
        return 1
    events.post(md, "RolledBack", f"rolled back by {_whoami()} from version {was} to "
                f"{entry['version']} (deployed {entry.get('deployedAt', '?')})")
    print(f"rolled back {namespace}/{args.name}: {change}")
    return 0
