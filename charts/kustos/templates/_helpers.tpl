{{/* Names and labels shared by every template. */}}

{{- define "kustos.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kustos.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kustos.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kustos.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kustos.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kustos.labels" -}}
helm.sh/chart: {{ include "kustos.chart" . }}
{{ include "kustos.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kustos
{{- end }}

{{- define "kustos.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kustos.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kustos.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* "true" when kopf peering is on: explicitly, or "auto" with more than one replica. */}}
{{- define "kustos.peering" -}}
{{- $p := .Values.peering.enabled }}
{{- if or (eq (toString $p) "true") (and (eq (toString $p) "auto") (gt (int .Values.replicaCount) 1)) }}true{{ end }}
{{- end }}

{{- define "kustos.webhookName" -}}
{{- printf "%s-webhook" (include "kustos.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Who makes the webhook certificate: operator, helm or cert-manager. */}}
{{- define "kustos.webhookCertificate" -}}
{{- if .Values.webhook.certManager.enabled }}cert-manager{{ else }}{{ .Values.webhook.certificate }}{{ end }}
{{- end }}

{{/* The Secret of the webhook certificate: the operator's own name, so that switching from
     helm or cert-manager never has the operator read a Secret that is about to be removed. */}}
{{- define "kustos.webhookSecret" -}}
{{- $suffix := ternary "webhook-cert" "webhook-tls" (eq (include "kustos.webhookCertificate" .) "operator") }}
{{- printf "%s-%s" (include "kustos.fullname" .) $suffix | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The names the webhook certificate must carry: the Service's DNS names. */}}
{{- define "kustos.webhookDNSNames" -}}
{{- $svc := include "kustos.webhookName" . }}
{{- $ns := .Release.Namespace }}
{{- $domain := .Values.config.cluster_domain | default "cluster.local" }}
{{- toJson (list (printf "%s.%s.svc" $svc $ns) $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns $domain)) }}
{{- end }}

{{/* The RBAC rule sets, from files/rbac-rules.yaml (`python -m kustos.rbac --write ...`):
     {clusterWide: {clusterRole, secrets, peering}, namespaced: {clusterRole, role, peering}}. */}}
{{- define "kustos.rbacRules" -}}
{{- $raw := .Files.Get "files/rbac-rules.yaml" }}
{{- if not $raw }}{{ fail "files/rbac-rules.yaml is missing from the chart (make chart)" }}{{ end }}
{{- $raw }}
{{- end }}
