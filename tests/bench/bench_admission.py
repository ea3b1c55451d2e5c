"""What the governance webhook costs per admission, on the local control plane.

Not a test (not part of `make test`). Starts the control plane if it is not running, the
real operator with its webhook (TLS, self-registered configuration scoped to one label),
a GovernancePolicy for the labelled namespace, and times server-side dry-run creates of a
compliant ModelDeployment in a governed and in an ungoverned namespace, alternating:

    .venv/bin/python tests/bench/bench_admission.py [--count 50] [--warmup 10] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

from cluster import REPO, ensure_cluster, kubectl  # noqa: E402

TAG = f"b{uuid.uuid4().hex[:6]}"
LABEL = "kustos-bench-governed"


def model(namespace: str) -> dict[str, Any]:
    return {"apiVersion": "kustos.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": namespace},
            "spec": {"model": {"version": "1", "uri": "https://models.example/iris.skops",
                               "digest": "sha256:" + "0" * 64},
                     "governance": {"owner": "bench", "riskTier": "medium"}}}


def timed_creates(namespace: str, n: int) -> list[float]:
    from kustos.k8s import client

    out = []
    for _ in range(n):
        started = time.perf_counter()
        client.create(model(namespace), dry_run=True)
        out.append((time.perf_counter() - started) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=50, help="timed creates per round (50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed creates first (10)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)

    kubeconfig = ensure_cluster()
    kubectl("apply", "--server-side", "--field-manager=kustos-crds", "--force-conflicts",
            "-f", str(REPO / "crds"), kubeconfig=kubeconfig)
    governed, plain = f"{TAG}-governed", f"{TAG}-plain"
    config = f"kustos-bench-{TAG}"
    for ns in (governed, plain):
        kubectl("create", "namespace", ns, kubeconfig=kubeconfig)
    kubectl("label", "namespace", governed, f"{LABEL}={TAG}", kubeconfig=kubeconfig)
    kubectl("apply", "-f", "-", kubeconfig=kubeconfig, input=f"""
apiVersion: kustos.dev/v1alpha1
kind: GovernancePolicy
metadata: {{name: {config}}}
spec:
  namespaceSelector: {{matchLabels: {{{LABEL}: "{TAG}"}}}}
  requireOwner: true
  digestRequiredFor: [medium, high]
""")
    work = Path(tempfile.mkdtemp(prefix="kustos-bench-admission-"))
    health = 18081 + os.getpid() % 1000
    proc = subprocess.Popen(
        [sys.executable, "-m", "kustos.cli", "run", "--namespace", f"{TAG}-*",
         "--metrics-port", "0", "--liveness", f"http://127.0.0.1:{health}/healthz",
         "--webhook", "--webhook-bind", "127.0.0.1", "--webhook-host", "127.0.0.1",
         "--webhook-port", str(health + 1000), "--webhook-configuration", config,
         "--webhook-namespace-selector", f"{LABEL}={TAG}"],
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        stdout=(work / "operator.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        os.environ["KUBECONFIG"] = str(kubeconfig)
        from kustos.k8s import client

        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"operator did not start; see {work}/operator.log") from None
                time.sleep(0.5)
        # The webhook is registered by the operator; wait until it answers for the
        # governed namespace (a refusal of a non-compliant object proves it is called).
        bad = model(governed)
        del bad["spec"]["governance"]["owner"]
        while True:
            try:
                client.create(bad, dry_run=True)
            except client.ApiError as err:
                if "requireOwner" in err.message:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("the webhook never refused a non-compliant object")
            time.sleep(0.5)
        results: dict[str, list[float]] = {"governed": [], "ungoverned": []}
        for ns in (governed, plain):
            timed_creates(ns, args.warmup)
        for _ in range(args.rounds):
            results["governed"] += timed_creates(governed, args.count)
            results["ungoverned"] += timed_creates(plain, args.count)
        print("| namespace | creates | median (ms) | p90 (ms) |")
        print("|---|---|---|---|")
        for key, values in results.items():
            q = statistics.quantiles(values, n=10)
            print(f"| {key} | {len(values)} | {statistics.median(values):.2f} | {q[8]:.2f} |")
        cost = statistics.median(results["governed"]) - statistics.median(results["ungoverned"])
        print(f"\nwebhook cost per admission (median difference): {cost:.2f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        kubectl("delete", "validatingwebhookconfiguration", config, "--ignore-not-found",
                kubeconfig=kubeconfig, check=False)
        kubectl("delete", "governancepolicy", config, "--ignore-not-found",
                kubeconfig=kubeconfig, check=False)
        for ns in (governed, plain):
            kubectl("delete", "namespace", ns, "--wait=false", kubeconfig=kubeconfig,
                    check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
