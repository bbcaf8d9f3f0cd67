{{/*
The firewall container block, for this chart's gateway and for your own pod templates.

Context: a dict with
  Values         this chart's values (required: image, sidecar, config)
  configMapName  the ConfigMap holding config.yaml (required outside this chart)
  appVersion     default image tag (optional; this chart's appVersion when included here)
  native         overrides Values.sidecar.native (optional)

In a parent chart that lists trigger-firewall as a dependency (values under `trigger-firewall:`):

  spec:
    terminationGracePeriodSeconds: {{ include "trigger-firewall.terminationGracePeriodSeconds" (dict "Values" (index .Values "trigger-firewall")) }}
    securityContext: {{- include "trigger-firewall.podSecurityContext" . | nindent 6 }}
    initContainers:          # native sidecar (sidecar.native: true); `containers:` otherwise
      {{- include "trigger-firewall.sidecar.container" (dict "Values" (index .Values "trigger-firewall") "configMapName" "my-firewall-config") | nindent 6 }}
    volumes:
      {{- include "trigger-firewall.sidecar.volumes" (dict "Values" (index .Values "trigger-firewall") "configMapName" "my-firewall-config") | nindent 6 }}

The block is a YAML list item (starts with "- name:").
*/}}
{{- define "trigger-firewall.sidecar.container" -}}
{{- $v := .Values -}}
{{- $s := $v.sidecar -}}
{{- $tag := $v.image.tag | default .appVersion | default "latest" -}}
{{- $native := ternary .native $s.native (hasKey . "native") -}}
- name: trigger-firewall
  image: {{ printf "%s:%s" $v.image.repository $tag | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $native }}
  restartPolicy: Always
  {{- end }}
  args: ["--config", "/etc/trigger-firewall/config.yaml"]
  ports:
    - name: http
      containerPort: {{ $v.config.server.port | default 8080 }}
      protocol: TCP
    - name: admin
      containerPort: {{ $v.config.server.admin_port | default 9090 }}
      protocol: TCP
  env:
    - name: HF_HUB_OFFLINE
      value: "1"
    - name: TRIGGER_FIREWALL_CONFIG
      value: /etc/trigger-firewall/config.yaml
    {{- with $s.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: {{ $s.startupProbe.periodSeconds }}
    failureThreshold: {{ $s.startupProbe.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: admin
    periodSeconds: {{ $s.readinessProbe.periodSeconds }}
    failureThreshold: {{ $s.readinessProbe.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /livez
      port: admin
    periodSeconds: {{ $s.livenessProbe.periodSeconds }}
    timeoutSeconds: {{ $s.livenessProbe.timeoutSeconds }}
    failureThreshold: {{ $s.livenessProbe.failureThreshold }}
  resources:
    {{- $res := deepCopy $s.resources }}
    {{- if $s.cpuLimit }}
    {{- $_ := set $res "limits" (merge (dict "cpu" $s.cpuLimit) ($res.limits | default dict)) }}
    {{- end }}
    {{- toYaml $res | nindent 4 }}
  securityContext:
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    runAsNonRoot: true
    runAsUser: 10001
    runAsGroup: 10001
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  volumeMounts:
    - name: trigger-firewall-config
      mountPath: /etc/trigger-firewall
      readOnly: true
    - name: trigger-firewall-tmp
      mountPath: /tmp
{{- end -}}

{{/* The volumes the container block mounts (same context). The config is a directory mount. */}}
{{- define "trigger-firewall.sidecar.volumes" -}}
- name: trigger-firewall-config
  configMap:
    name: {{ required "configMapName is required" .configMapName }}
- name: trigger-firewall-tmp
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.sidecar.tmpSizeLimit | default "64Mi" }}
{{- end -}}

{{/* drain_delay_seconds + shutdown_timeout_seconds + margin, rounded up (context: dict with Values). */}}
{{- define "trigger-firewall.terminationGracePeriodSeconds" -}}
{{- $srv := .Values.config.server | default dict -}}
{{- $drain := $srv.drain_delay_seconds | default 5 -}}
{{- $shutdown := $srv.shutdown_timeout_seconds | default 120 -}}
{{- addf $drain $shutdown .Values.sidecar.terminationMarginSeconds | ceil | int -}}
{{- end -}}

{{/* Restricted pod security context matching the image's numeric user. */}}
{{- define "trigger-firewall.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
