{{/* Labels every object of the release carries. */}}
{{- define "kars.labels" -}}
app.kubernetes.io/part-of: kars
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The tag of kars's images: image.version, else the chart's appVersion. */}}
{{- define "kars.version" -}}
{{- default .Chart.AppVersion .Values.image.version -}}
{{- end }}

{{/* kars.image renders <registry>/<name>:<version> for (list $ "name"). */}}
{{- define "kars.image" -}}
{{- $ := index . 0 -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $.Values.image.registry) (index . 1) (include "kars.version" $) -}}
{{- end }}

{{/* The controller's ServiceAccount as the API server names its user. */}}
{{- define "kars.controllerUser" -}}
system:serviceaccount:{{ .Release.Namespace }}:kars-controller
{{- end }}

{{/* A CEL expression that is true when the requesting user is in an exempt group. */}}
{{- define "kars.exempt" -}}
{{- if .Values.admission.exemptGroups -}}
request.userInfo.groups.exists(g, g in {{ toJson .Values.admission.exemptGroups | replace "\"" "'" }})
{{- else -}}
false
{{- end -}}
{{- end }}

{{- define "kars.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}
