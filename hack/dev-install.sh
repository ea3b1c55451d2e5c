#!/usr/bin/env bash
# `make dev` after the cluster and the images: the operator installed by the Helm chart as a
# pod (the chart's RBAC, restricted Pod Security, webhook on), the local model store with
# the samples' models, the samples, and one real prediction through the iris Service.
#
#   hack/dev-install.sh          install or upgrade, wait, predict (safe to rerun)
#   hack/dev-install.sh predict  only the prediction
#
# Needs KUBECONFIG; kubectl and python from .venv, helm from the tools cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=hack/versions.sh
. "$here/versions.sh"
kubectl=$root/.venv/bin/kubectl
python=$root/.venv/bin/python
helm=$KUSTOS_BIN/helm
ns=kustos-system
export HELM_CACHE_HOME=$root/.cluster/helm/cache HELM_CONFIG_HOME=$root/.cluster/helm/config \
  HELM_DATA_HOME=$root/.cluster/helm/data

say() { printf '==> %s\n' "$*"; }

predict() {
  local ip body
  ip=$("$kubectl" get svc iris -n default -o jsonpath='{.spec.clusterIP}')
  body='{"inputs":[{"name":"input-0","shape":[2,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2,6.7,3.0,5.2,2.3]}]}'
  say "a prediction through the iris Service (ClusterIP $ip, routed by kube-proxy):"
  echo "  curl -s -H 'Content-Type: application/json' http://$ip/v2/models/iris/infer -d '$body'"
  curl -fsS --max-time 10 -H 'Content-Type: application/json' \
    "http://$ip/v2/models/iris/infer" -d "$body"
  echo
}

if [ "${1:-}" = predict ]; then predict; exit 0; fi

# The process operator of an older `make dev` would act beside the chart's.
bash "$here/dev-operator.sh" stop >/dev/null 2>&1 || true

# Secrets are readable only where the chart binds its secrets Role: the samples' namespace.
say "operator: Helm chart into $ns (image ghcr.io/kustos-dev/kustos, imported, never pulled)"
"$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$kubectl" label namespace "$ns" --overwrite pod-security.kubernetes.io/enforce=restricted \
  pod-security.kubernetes.io/enforce-version=latest >/dev/null
"$helm" upgrade --install kustos "$root/charts/kustos" --namespace "$ns" \
  --set image.pullPolicy=Never --set 'rbac.secretNamespaces={default}' \
  --wait --timeout 300s >/dev/null
# A rebuilt image under the same tag: make the pod pick it up.
if [ "${KUSTOS_DEV_RESTART:-1}" = 1 ]; then
  "$kubectl" -n "$ns" rollout restart deploy/kustos >/dev/null
  "$kubectl" -n "$ns" rollout status deploy/kustos --timeout=300s >/dev/null
fi

say "model store: $("$python" "$here/model_store.py" up) (moto; the samples' models trained now)"
"$python" "$here/model_store.py" publish >/dev/null
"$python" "$here/model_store.py" secret -n default | "$kubectl" apply -f - >/dev/null

say "samples (manifests/samples/*.yaml with the published digests)"
"$python" "$here/model_store.py" samples | "$kubectl" apply -f -
say "waiting for the samples' real pods"
"$kubectl" wait --for=condition=Ready md --all -n default --timeout=600s
"$kubectl" get kustos -n default
predict
