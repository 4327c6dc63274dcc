{{/* Names and labels shared by the templates. */}}
{{- define "pgshard.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgshard.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "pgshard.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pgshard.secretName" -}}
{{- default (printf "%s-secrets" (include "pgshard.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The environment every pgshard container gets: the Secret's keys. */}}
{{- define "pgshard.secretEnv" -}}
- name: PGSHARD_ADMIN_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "pgshard.secretName" . }}
      key: admin-password
- name: PGSHARD_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "pgshard.secretName" . }}
      key: jwt-secret
- name: SHARD_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "pgshard.secretName" . }}
      key: shard-password
- name: APP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "pgshard.secretName" . }}
      key: app-password
- name: TMPDIR
  value: /tmp
{{- end -}}

{{/* The pod template shared by routers and managers; .role is "router" or "all". */}}
{{- define "pgshard.podSpec" -}}
{{- $root := .root -}}
{{- $part := .part -}}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
containers:
  - name: pgshard
    image: "{{ $root.Values.image.repository }}:{{ $root.Values.image.tag }}"
    imagePullPolicy: {{ $root.Values.image.pullPolicy }}
    args: {{ if eq .role "router" }}["serve", "--role", "router"]{{ else }}["serve"]{{ end }}
    env:
      {{- include "pgshard.secretEnv" $root | nindent 6 }}
    ports:
      - {name: postgres, containerPort: {{ $root.Values.ports.postgres }}}
      - {name: http, containerPort: {{ $root.Values.ports.http }}}
    readinessProbe:
      httpGet: {path: /ready, port: http}
      periodSeconds: 5
      failureThreshold: 2
    livenessProbe:
      httpGet: {path: /health, port: http}
      initialDelaySeconds: 10
      periodSeconds: 10
      failureThreshold: 3
    resources:
      {{- toYaml $part.resources | nindent 6 }}
    securityContext:
      {{- toYaml $root.Values.securityContext | nindent 6 }}
    volumeMounts:
      - {name: config, mountPath: /etc/pgshard, readOnly: true}
      - {name: tmp, mountPath: /tmp}
volumes:
  - name: config
    configMap: {name: {{ include "pgshard.fullname" $root }}-config}
  - name: tmp
    emptyDir: {medium: Memory, sizeLimit: 16Mi}
{{- with $part.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $part.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $part.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
