{{/* Names and labels shared by the templates. */}}
{{- define "cairn-participant.fullname" -}}
{{- printf "%s-cairn-participant" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "cairn-participant.labels" -}}
app.kubernetes.io/name: cairn-participant
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "cairn-participant.selector" -}}
app.kubernetes.io/name: cairn-participant
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cairn-participant.kitSecret" -}}
{{- if .Values.kit.existingSecret -}}
{{- .Values.kit.existingSecret -}}
{{- else -}}
{{- printf "%s-kit" (include "cairn-participant.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "cairn-participant.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.gpu.enabled -}}{{- $tag = printf "%s-gpu" $tag -}}{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
