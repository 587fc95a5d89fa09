{{/* Names and labels shared by every template. */}}

{{- define "lag.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lag.labels" -}}
app.kubernetes.io/part-of: llm-aware-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "enforcer") */}}
{{- define "lag.selectorLabels" -}}
app.kubernetes.io/name: {{ printf "lag-%s" .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* Every label of one component's objects: (dict "root" $ "component" "enforcer") */}}
{{- define "lag.componentLabels" -}}
app.kubernetes.io/part-of: llm-aware-gateway
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/component: {{ .component }}
{{ include "lag.selectorLabels" . }}
{{- end -}}

{{/* The enforcer's scrape annotations (its admin port). */}}
{{- define "lag.scrapeAnnotations" -}}
{{- if .Values.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.enforcer.ports.admin | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* The env both components need: the endpoints that override the config file. */}}
{{- define "lag.endpointsEnv" -}}
- name: LAG_ETCD_ENDPOINTS
  valueFrom: { configMapKeyRef: { name: {{ include "lag.fullname" . }}-endpoints, key: etcd_endpoints } }
- name: LAG_KAFKA_BROKERS
  valueFrom: { configMapKeyRef: { name: {{ include "lag.fullname" . }}-endpoints, key: kafka_brokers } }
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
{{- end -}}

{{- define "lag.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser }}
runAsGroup: {{ .Values.securityContext.runAsGroup }}
seccompProfile: { type: RuntimeDefault }
{{- end -}}

{{- define "lag.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: { drop: ["ALL"] }
{{- end -}}
