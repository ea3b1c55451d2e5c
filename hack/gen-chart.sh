#!/usr/bin/env bash
# Regenerates what the Helm chart copies or derives from the rest of the repository:
#   charts/kustos/crds/kustos.dev_*.yaml    copies of crds/ (which `make crds` generates)
#   tests/unit/golden/chart-*.out.yaml     `helm template` of each chart-*.values.yaml case,
#                                          with the self-generated certificates masked
# tests/unit/test_chart.py fails when any of them is stale. charts/kustos/files/rbac-rules.yaml
# and files/prometheus-rules.yaml are written by their own generators.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
# shellcheck source=hack/versions.sh
. "$here/versions.sh"
HELM=${HELM:-$KUSTOS_BIN/helm}
[ -x "$HELM" ] || { echo "gen-chart: no helm at $HELM (make tools)" >&2; exit 1; }

chart="$repo/charts/kustos"
rm -f "$chart"/crds/kustos.dev_*.yaml
cp "$repo"/crds/kustos.dev_*.yaml "$chart/crds/"

# The same masking as tests/unit/test_chart.py: certificates differ on every render.
mask() { sed -E 's/^( *(tls\.crt|tls\.key|ca\.crt|caBundle): ).+$/\1MASKED/'; }

golden="$repo/tests/unit/golden"
for values in "$golden"/chart-*.values.yaml; do
  out="${values%.values.yaml}.out.yaml"
  "$HELM" template kustos "$chart" --namespace kustos-system --values "$values" | mask >"$out"
done
echo "gen-chart: crds/ copied, $(ls "$golden"/chart-*.values.yaml | wc -l) golden renders written"
