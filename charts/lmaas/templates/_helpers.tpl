{{/* Names, labels and shared pod pieces of the lmaas chart. Every helper is lmaas.*. */}}

{{- define "lmaas.name" -}}
{{- default "lmaas" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "lmaas.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "lmaas.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "lmaas.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object; pass (dict "root" $ "component" "gateway"). */}}
{{- define "lmaas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
{{ include "lmaas.selectorLabels" . }}
{{- end -}}

{{- define "lmaas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lmaas.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: lmaas
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference; pass (dict "root" $ "image" .Values.images.gateway). */}}
{{- define "lmaas.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{- define "lmaas.secretName" -}}
{{- printf "%s-secrets" (include "lmaas.fullname" .) -}}
{{- end -}}

{{- define "lmaas.configName" -}}
{{- printf "%s-config" (include "lmaas.fullname" .) -}}
{{- end -}}

{{- define "lmaas.postgresName" -}}
{{- printf "%s-postgresql" (include "lmaas.fullname" .) -}}
{{- end -}}

{{- define "lmaas.redisName" -}}
{{- printf "%s-redis" (include "lmaas.fullname" .) -}}
{{- end -}}

{{- define "lmaas.serviceAccount" -}}
{{- printf "%s-%s" (include "lmaas.fullname" .root) .component -}}
{{- end -}}

{{/* The Secret and key of the database URL. */}}
{{- define "lmaas.databaseSecret" -}}
{{- if .Values.database.existingSecret -}}{{ .Values.database.existingSecret }}{{- else -}}{{ include "lmaas.secretName" . }}{{- end -}}
{{- end -}}

{{- define "lmaas.redisSecret" -}}
{{- if .Values.redis.existingSecret -}}{{ .Values.redis.existingSecret }}{{- else -}}{{ include "lmaas.secretName" . }}{{- end -}}
{{- end -}}

{{- define "lmaas.postgresSecret" -}}
{{- if .Values.postgresql.existingSecret -}}{{ .Values.postgresql.existingSecret }}{{- else -}}{{ include "lmaas.secretName" . }}{{- end -}}
{{- end -}}

{{/* Environment shared by gateway, worker and operator: database, Redis, broker, admin token. */}}
{{- define "lmaas.platformEnv" -}}
{{- if .Values.database.bundled }}
- name: LMAAS_POSTGRES_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "lmaas.postgresSecret" . }}
      key: {{ ternary "password" "postgres-password" (ne .Values.postgresql.existingSecret "") }}
- name: LMAAS_DATABASE_URL
  value: {{ printf "postgresql+psycopg2://%s:$(LMAAS_POSTGRES_PASSWORD)@%s:5432/%s" .Values.postgresql.username (include "lmaas.postgresName" .) .Values.postgresql.database | quote }}
{{- else }}
- name: LMAAS_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "lmaas.databaseSecret" . }}
      key: {{ .Values.database.key }}
{{- end }}
{{- if .Values.redis.bundled }}
- name: LMAAS_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "lmaas.redisName" .) | quote }}
{{- else }}
- name: LMAAS_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "lmaas.redisSecret" . }}
      key: {{ .Values.redis.key }}
{{- end }}
- name: LMAAS_BROKER_URL
  value: "$(LMAAS_REDIS_URL)"
- name: LMAAS_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ default (include "lmaas.secretName" .) .Values.adminToken.existingSecret }}
      key: {{ .Values.adminToken.key }}
{{- end -}}

{{/* Extra env from a map (sorted by name). */}}
{{- define "lmaas.extraEnv" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The checksum of config and secrets: pods restart when either changes. */}}
{{- define "lmaas.configChecksum" -}}
{{- $config := include (print .Template.BasePath "/configmap.yaml") . -}}
{{- $secret := include (print .Template.BasePath "/secret.yaml") . -}}
{{- printf "%s%s" $config $secret | sha256sum -}}
{{- end -}}

{{- define "lmaas.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Fail early on a database or Redis that is neither bundled nor given. */}}
{{- define "lmaas.validate" -}}
{{- if and (not .Values.database.bundled) (not .Values.database.url) (not .Values.database.existingSecret) -}}
{{- fail "database: set database.bundled=true, or database.url, or database.existingSecret" -}}
{{- end -}}
{{- if and (not .Values.redis.bundled) (not .Values.redis.url) (not .Values.redis.existingSecret) -}}
{{- fail "redis: set redis.bundled=true, or redis.url, or redis.existingSecret" -}}
{{- end -}}
{{- end -}}
