{{/*
fullname: the release name, or <release>-meshlet when the release name does not contain "meshlet"; at most 50
characters, so that "<fullname>-webhook-tls" and the other names stay within 63.
*/}}
{{- define "meshlet.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The webhook's Deployment, Service, PodDisruptionBudget and (by default) ServiceAccount: meshlet-webhook for the release "meshlet", as in the kustomize base. */}}
{{- define "meshlet.webhookName" -}}
{{- printf "%s-webhook" (include "meshlet.fullname" .) -}}
{{- end -}}

{{- define "meshlet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "meshlet.webhookName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- if not .Values.serviceAccount.name -}}
{{- fail "serviceAccount.name is required when serviceAccount.create is false: the name of an existing ServiceAccount for the webhook" -}}
{{- end -}}
{{- .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the serving certificate (tls.crt, tls.key, ca.crt), written by cert-manager or by this chart. */}}
{{- define "meshlet.tlsSecretName" -}}
{{- printf "%s-webhook-tls" (include "meshlet.fullname" .) -}}
{{- end -}}

{{/* The DNS names the API server calls the webhook's Service by: the certificate must hold them. */}}
{{- define "meshlet.dnsNames" -}}
{{- $svc := printf "%s.%s.svc" (include "meshlet.webhookName" .) .Release.Namespace -}}
{{- list $svc (printf "%s.cluster.local" $svc) | toJson -}}
{{- end -}}

{{/* The webhook's image: image.repository:image.tag, the tag defaulting to the chart's appVersion. */}}
{{- define "meshlet.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The image the webhook injects: sidecar.image, else the webhook's own image (this meshlet version's). */}}
{{- define "meshlet.sidecarImage" -}}
{{- default (include "meshlet.image" .) .Values.sidecar.image -}}
{{- end -}}

{{/* Labels on every object of the chart. */}}
{{- define "meshlet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: meshlet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The webhook pods' selector: app.kubernetes.io/name as in the kustomize base, and the release. */}}
{{- define "meshlet.selectorLabels" -}}
app.kubernetes.io/name: meshlet-webhook
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
