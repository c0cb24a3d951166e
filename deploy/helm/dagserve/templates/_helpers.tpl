{{/* Names and labels. */}}
{{- define "dagserve.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dagserve.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "dagserve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dagserve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dagserve.labels" -}}
{{ include "dagserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "dagserve.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dagserve.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The grace period: preStop + drain + margin, and never less than preStop + drain. */}}
{{- define "dagserve.terminationGrace" -}}
{{- $drain := add (int .Values.preStopSleepSeconds) (int (ceil .Values.server.exitTimeoutSecs)) -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $drain 10 -}}
{{- else if lt (int .Values.terminationGracePeriodSeconds) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) is below preStopSleepSeconds + server.exitTimeoutSecs (%d): the kubelet would kill pods while they drain" (int .Values.terminationGracePeriodSeconds) $drain) -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds -}}
{{- end -}}
{{- end -}}

{{/* The series selector of this release's scrape job, and of the models that count for scaling. */}}
{{- define "dagserve.jobSelector" -}}
job="{{ include "dagserve.fullname" . }}"
{{- end -}}
{{- define "dagserve.modelSelector" -}}
{{ include "dagserve.jobSelector" . }}, model=~"{{ .Values.autoscaling.models }}"
{{- end -}}

{{/* Average queue time per request (µs) over the release: what KEDA reads. */}}
{{- define "dagserve.queueTimeQuery" -}}
sum(rate(nv_inference_queue_duration_us{ {{- include "dagserve.modelSelector" . -}} }[{{ .Values.prometheusRule.rateWindow }}])) / (sum(rate(nv_inference_request_success{ {{- include "dagserve.modelSelector" . -}} }[{{ .Values.prometheusRule.rateWindow }}])) + 0.001)
{{- end -}}
