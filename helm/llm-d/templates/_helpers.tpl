{{- define "llm-d.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "llm-d.fullname" -}}
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

{{- define "llm-d.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "llm-d.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "llm-d.selectorLabels" -}}
app.kubernetes.io/name: {{ include "llm-d.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The in-cluster URL to put in the router's LLMD_ENDPOINT. */}}
{{- define "llm-d.endpoint" -}}
{{- printf "http://%s.%s.svc.cluster.local:%v" .Values.service.name .Release.Namespace .Values.service.port }}
{{- end }}
