{{/* Names and labels shared by the templates. */}}
{{- define "cairn-coordinator.fullname" -}}
{{- printf "%s-cairn-coordinator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cairn-coordinator.labels" -}}
app.kubernetes.io/name: cairn-coordinator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cairn-coordinator.selector" -}}
app.kubernetes.io/name: cairn-coordinator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
