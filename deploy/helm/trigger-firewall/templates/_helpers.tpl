{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "trigger-firewall.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name. */}}
{{- define "trigger-firewall.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "trigger-firewall.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels (helm.sh chart best practices). */}}
{{- define "trigger-firewall.labels" -}}
helm.sh/chart: {{ include "trigger-firewall.chart" . }}
{{ include "trigger-firewall.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trigger-firewall
{{- end -}}

{{- define "trigger-firewall.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trigger-firewall.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "trigger-firewall.configMapName" -}}
{{- default (printf "%s-config" (include "trigger-firewall.fullname" .)) .Values.sidecar.configMapName -}}
{{- end -}}
