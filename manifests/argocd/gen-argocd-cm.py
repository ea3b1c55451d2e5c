"""Write argocd-cm.yaml from the health.lua files (run after changing one of them):

    .venv/bin/python manifests/argocd/gen-argocd-cm.py

tests/unit/test_argocd_health.py fails when the two disagree.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
KINDS = ("ModelDeployment", "ExplainerSpec", "DriftMonitor")
HEADER = """\
# The Kustos health checks as argocd-cm keys, for an Argo CD you configure with a ConfigMap.
# Generated from resource_customizations/kustos.dev/*/health.lua by gen-argocd-cm.py.
# Merge the data keys into your argocd-cm (do not replace the whole ConfigMap):
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file argocd-cm.yaml
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def main() -> None:
    out = [HEADER]
    for kind in KINDS:
        script = (HERE / "resource_customizations" / "kustos.dev" / kind / "health.lua")
        out.append(f"  resource.customizations.health.kustos.dev_{kind}: |\n")
        out += [f"    {line}\n" if line else "\n" for line in script.read_text().splitlines()]
    (HERE / "argocd-cm.yaml").write_text("".join(out))


if __name__ == "__main__":
    main()
