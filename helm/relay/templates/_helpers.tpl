{{/*
Chart name, truncated to the 63 characters a DNS label allows.
*/}}
{{- define "relay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name prefix of every object: the release name, plus the chart name when
the release name does not already contain it.
*/}}
{{- define "relay.fullname" -}}
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

{{- define "relay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels shared by every object.
*/}}
{{- define "relay.labels" -}}
helm.sh/chart: {{ include "relay.chart" . }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "relay.name" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of the relay nodes (immutable once installed).
*/}}
{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end }}

{{/*
Labels of the `helm test` pods (not selected by the relay Service).
*/}}
{{- define "relay.testSelectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: helm-test
{{- end }}

{{/*
Selector labels of the bundled Redis.
*/}}
{{- define "relay.redis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "relay.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "relay.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret the chart creates for RELAY_SECRET / RELAY_API_KEY, or the
user's existing one.
*/}}
{{- define "relay.authSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "relay.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Name of the bundled Redis objects (StatefulSet, Service).
*/}}
{{- define "relay.redis.fullname" -}}
{{- printf "%s-redis" (include "relay.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
Where the Redis password comes from, as a dict {secret, key}; empty secret
means "no password". The chart-created Secret is "<fullname>-redis".
*/}}
{{- define "relay.redis.passwordSource" -}}
{{- if and .Values.redis.bundled.enabled .Values.redis.bundled.existingSecret }}
{{- dict "secret" .Values.redis.bundled.existingSecret "key" .Values.redis.bundled.existingSecretPasswordKey | toJson }}
{{- else if .Values.redis.bundled.enabled }}
{{- dict "secret" (include "relay.redis.fullname" .) "key" "redis-password" | toJson }}
{{- else if .Values.redis.existingSecret }}
{{- dict "secret" .Values.redis.existingSecret "key" .Values.redis.existingSecretPasswordKey | toJson }}
{{- else if .Values.redis.password }}
{{- dict "secret" (include "relay.redis.fullname" .) "key" "redis-password" | toJson }}
{{- else }}
{{- dict "secret" "" "key" "" | toJson }}
{{- end }}
{{- end }}

{{/*
The Redis URL handed to the relay (RELAY_REDIS). When a password is set it
holds only the reference $(REDIS_PASSWORD), which the kubelet expands from the
REDIS_PASSWORD env var (itself a secretKeyRef) declared just before it: the
password never appears in the Deployment.
*/}}
{{- define "relay.redis.url" -}}
{{- $src := include "relay.redis.passwordSource" . | fromJson }}
{{- $scheme := "redis" }}
{{- $rest := printf "%s:6379" (include "relay.redis.fullname" .) }}
{{- $user := "" }}
{{- if not .Values.redis.bundled.enabled }}
{{- $parts := splitn "://" 2 .Values.redis.url }}
{{- $scheme = $parts._0 }}
{{- $rest = $parts._1 }}
{{- $user = .Values.redis.username }}
{{- end }}
{{- if $src.secret }}
{{- printf "%s://%s:$(REDIS_PASSWORD)@%s" $scheme $user $rest }}
{{- else if $user }}
{{- printf "%s://%s@%s" $scheme $user $rest }}
{{- else }}
{{- printf "%s://%s" $scheme $rest }}
{{- end }}
{{- end }}

{{/*
The value of a chart-created Secret, in this order: the explicit value; one
derived from .Values.secretSeed (the same on every render: GitOps tools that
only run `helm template` keep it); the value already stored in the cluster
(lookup; empty offline); 48 random characters.
Arguments: (list $ secretName key explicitValue)
*/}}
{{- define "relay.secretValue" -}}
{{- $ctx := index . 0 }}
{{- $name := index . 1 }}
{{- $key := index . 2 }}
{{- $explicit := index . 3 }}
{{- if $explicit }}
{{- $explicit }}
{{- else if $ctx.Values.secretSeed }}
{{- printf "%s/%s/%s/%s" $ctx.Values.secretSeed $ctx.Release.Namespace $name $key | sha256sum | trunc 48 }}
{{- else }}
{{- $existing := lookup "v1" "Secret" $ctx.Release.Namespace $name }}
{{- if and $existing (hasKey (default (dict) $existing.data) $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
terminationGracePeriodSeconds: preStop sleep + drain + margin, so the kubelet
never SIGKILLs a node that is still closing its sockets.
*/}}
{{- define "relay.terminationGracePeriodSeconds" -}}
{{- add (int64 .Values.lifecycle.preStopSleepSeconds) (int64 .Values.relay.drainSecs) (int64 .Values.lifecycle.terminationMarginSeconds) }}
{{- end }}
