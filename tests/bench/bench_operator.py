"""Operator benchmark on the local control plane: how fast, how many writes, how much memory.

    .venv/bin/python tests/bench/bench_operator.py [--count 100] \
        [--output docs/operator-performance.md]

Measures, with the real operator process against the real API server (kwok simulates pods):
- time from `kubectl apply` of N ModelDeployments to every child Deployment created, and to
  every ModelDeployment Ready;
- API writes per ModelDeployment (the operator's own counter) for create, and for a resync;
- the operator's resident memory before and after, per managed object;
- time for a restarted operator to resume (resync) all N, and the writes that took (0).
Not part of `make test`: it prints figures, it does not assert on timings.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
sys.path.insert(0, str(ROOT / "tests"))  # ports.py, which conftest imports

from cluster import ensure_cluster, kubectl  # noqa: E402
from conftest import Kube, Operator, kwok_room  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def manifests(n: int, ns: str, first: int = 0, end: int | None = None) -> str:
    docs = []
    for i in range(first, n if end is None else end):
        docs.append({"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
                     "metadata": {"name": f"m{i:04d}", "namespace": ns},
                     "spec": {"model": {"version": "1", "uri": f"s3://models/m{i}/model.skops",
                                        "digest": "sha256:" + "c" * 64},
                              "replicas": 1}})
    return yaml.safe_dump_all(docs)


def count_ready(kube: Kube, ns: str) -> tuple[int, int, int]:
    items: list[dict[str, Any]] = json.loads(kube.run("get", "md", "-n", ns, "-o", "json")
                                             .stdout)["items"]
    ready = 0
    for md in items:
        for c in (md.get("status") or {}).get("conditions") or []:
            if c["type"] == "Ready" and c["status"] == "True":
                ready += 1
    deps = json.loads(kube.run("get", "deployments", "-n", ns, "-o", "json").stdout)["items"]
    available = sum(1 for d in deps for c in (d.get("status") or {}).get("conditions") or []
                    if c["type"] == "Available" and c["status"] == "True")
    return len(deps), available, ready


def writes_by_resource(op: Operator) -> dict[str, float]:
    """kustos_operator_api_writes_total summed by its resource label."""
    out: dict[str, float] = {}
    for key, value in op.metrics().items():
        m = re.match(r'kustos_operator_api_writes_total\{.*resource="([^"]+)"', key)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + value
    return out


def model_writes_seen_by_apiserver(kube: Kube) -> float:
    """Writes to ModelDeployments (any subresource) other than their creation, as the API
    server counts them (apiserver_request_total): the operator's status writes and
    whatever kopf writes on the objects (annotations), which the operator's own counter
    does not see."""
    total = 0.0
    for line in kube.run("get", "--raw", "/metrics").stdout.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if labels.get("resource") == "modeldeployments" and \
                labels.get("verb") in ("PATCH", "PUT", "APPLY", "UPDATE", "DELETE"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--output", type=Path)
    args = ap.parse_args()
    n = args.count
    kubeconfig = ensure_cluster()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"),
            kubeconfig=kubeconfig)
    kube = Kube(kubeconfig)
    ns = f"bench-{int(time.time())}"
    kube.create_namespace(ns)
    op = Operator(kubeconfig)
    op.start(namespaces=[ns])
    with kwok_room(kube, n):
        try:
            assert op.proc is not None
            time.sleep(2)
            rss_idle = rss_mib(op.proc.pid)
            md_writes_before = model_writes_seen_by_apiserver(kube)
            t0 = time.monotonic()
            # In batches: one kubectl apply of 1000 can outlast kubectl's 120 s timeout on
            # a loaded control plane. Server-side, as Argo CD and Flux apply: one request
            # per object instead of a GET and a POST.
            for start in range(0, n, 250):
                kube.run("apply", "--server-side", "-f", "-",
                         input=manifests(n, ns, start, min(n, start + 250)))
            t_applied = time.monotonic() - t0
            t_children = t_available = t_ready = None
            deadline = t0 + args.timeout
            shown = 0.0
            while time.monotonic() < deadline:
                deps, available, ready = count_ready(kube, ns)
                now = time.monotonic() - t0
                if now - shown >= 15:
                    shown = now
                    print(f"{now:6.0f}s: {deps} Deployments, {available} Available, "
                          f"{ready} ModelDeployments Ready", file=sys.stderr)
                if t_children is None and deps >= n:
                    t_children = now
                if t_available is None and available >= n:
                    t_available = now
                if ready >= n:
                    t_ready = now
                    break
                time.sleep(0.5)
            if t_ready is None or t_children is None or t_available is None:
                print(f"not all Ready within {args.timeout}s", file=sys.stderr)
                return 1
            # Let trailing status updates land: until the write count is still for 5 s.
            settled, last = time.monotonic(), -1.0
            while time.monotonic() - settled < 5 and time.monotonic() < deadline:
                now_writes = op.metric("kustos_operator_api_writes_total")
                if now_writes != last:
                    settled, last = time.monotonic(), now_writes
                time.sleep(0.5)
            writes_create = op.metric("kustos_operator_api_writes_total")
            by_resource = writes_by_resource(op)
            # less the creations: kubectl's server-side apply counts as a write (APPLY)
            md_writes = model_writes_seen_by_apiserver(kube) - md_writes_before - n
            print(f"writes by resource: {by_resource}", file=sys.stderr)
            rss_loaded = rss_mib(op.proc.pid)
            op.restart(namespaces=[ns])
            t1 = time.monotonic()
            while op.metric("kustos_operator_reconciles_total") < n:
                if time.monotonic() - t1 > args.timeout:
                    print("resync did not finish", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            t_resync = time.monotonic() - t1
            writes_resync = op.metric("kustos_operator_api_writes_total")
            md_writes_resync = (model_writes_seen_by_apiserver(kube) - md_writes_before
                                - n - md_writes)
            assert op.proc is not None
            rss_after_restart = rss_mib(op.proc.pid)
        finally:
            op.stop()
            kube.run("delete", "namespace", ns, "--wait=false", check=False)

    children = sum(v for k, v in by_resource.items()
                   if k not in ("modeldeployments/status", "events"))
    rows = [
        ("ModelDeployments", f"{n}"),
        ("kubectl apply of all N (s)", f"{t_applied:.1f}"),
        ("apply -> all N Deployments created (s)", f"{t_children:.1f}"),
        ("apply -> all N Deployments Available (kube-controller-manager, kwok) (s)",
         f"{t_available:.1f}"),
        ("apply -> all N Ready (s)", f"{t_ready:.1f}"),
        ("API writes per ModelDeployment, create to Ready", f"{writes_create / n:.2f}"),
        ("- of which status writes", f"{by_resource.get('modeldeployments/status', 0) / n:.2f}"),
        ("- of which Events", f"{by_resource.get('events', 0) / n:.2f}"),
        ("- of which children (applies)", f"{children / n:.2f}"),
        ("writes to ModelDeployments seen by the API server, per object (status and kopf's "
         "annotations; not the creation)", f"{md_writes / n:.2f}"),
        ("API writes per ModelDeployment, kopf's included (children + Events + the above)",
         f"{(children + by_resource.get('events', 0) + md_writes) / n:.2f}"),
        ("restart -> all N resumed (resync) (s)", f"{t_resync:.1f}"),
        ("API writes during the resync", f"{writes_resync:.0f}"),
        ("writes to ModelDeployments during the resync (API server's count)",
         f"{md_writes_resync:.0f}"),
        ("operator RSS idle (MiB)", f"{rss_idle:.0f}"),
        (f"operator RSS with {n} objects (MiB)", f"{rss_loaded:.0f}"),
        ("RSS per managed object (KiB)", f"{(rss_loaded - rss_idle) * 1024 / n:.0f}"),
        ("operator RSS after restart and resync (MiB)", f"{rss_after_restart:.0f}"),
    ]
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               platform.processor())
    import os
    table = "\n".join(["| measure | value |", "|---|---|"] +
                      [f"| {k} | {v} |" for k, v in rows])
    text = (f"Machine: {os.cpu_count()} cores, {cpu}. Local control plane from hack/cluster.sh "
            f"(kwok simulates pods).\n\n{table}\n")
    print(text)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            "# Operator performance\n\nMeasured with "
            f"`.venv/bin/python tests/bench/bench_operator.py --count {n}`.\n\n{text}\n"
            "Writes are counted by the operator itself (`kustos_operator_api_writes_total`): "
            "one apply per child, one status patch per state change, one Event per "
            "deployed version. A resync of unchanged objects writes nothing.\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
