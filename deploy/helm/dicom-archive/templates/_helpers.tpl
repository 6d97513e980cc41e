{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "dicom-archive.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name; roles append -scp, -indexer, -query, -forwarder, -migrate. */}}
{{- define "dicom-archive.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "dicom-archive.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels. Call with (dict "ctx" $ "component" "scp"). */}}
{{- define "dicom-archive.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dicom-archive.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Common labels. Call with (dict "ctx" $ "component" "scp"); component may be empty. */}}
{{- define "dicom-archive.labels" -}}
helm.sh/chart: {{ include "dicom-archive.chart" .ctx }}
{{ include "dicom-archive.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: dicom-archive
{{- end }}

{{- define "dicom-archive.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where the HTTPS certificate and key (auth.tlsSecret) are mounted. */}}
{{- define "dicom-archive.httpTlsDir" -}}
/etc/dicom-archive/http-tls
{{- end }}

{{- define "dicom-archive.secretName" -}}
{{- default (printf "%s-credentials" (include "dicom-archive.fullname" .)) .Values.existingSecret }}
{{- end }}

{{/*
Non-secret settings (ConfigMap data). Integers go through int64 so that large values are not
rendered in float notation (1.048576e+06).
*/}}
{{- define "dicom-archive.configData" -}}
{{- $s := .Values.settings -}}
ARCHIVE_DATA_DIR: {{ .Values.dataDir | quote }}
{{- /* standalone: the embedded backends' defaults, all under ARCHIVE_DATA_DIR (the claim) */}}
{{- if not (include "dicom-archive.standalone" .) }}
{{- $store := required "backends.objectStore is required (s3://host:port/bucket)" .Values.backends.objectStore }}
{{- if not (hasPrefix "s3://" $store) }}
{{- fail (printf "backends.objectStore must be an s3:// URL (pods are stateless), got %q" $store) }}
{{- end }}
ARCHIVE_OBJECT_STORE: {{ $store | quote }}
{{- end }}
ARCHIVE_SEARCH_INDEX: {{ $s.searchIndex | quote }}
ARCHIVE_QUEUE_NAME: {{ $s.queueName | quote }}
ARCHIVE_AET: {{ $s.aet | quote }}
ARCHIVE_BIND: "0.0.0.0"
ARCHIVE_DICOM_PORT: {{ .Values.ports.dicom | int64 | quote }}
{{- /* query pods have their own address: same DICOM port as the receivers */}}
ARCHIVE_QUERY_DICOM_PORT: {{ .Values.ports.dicom | int64 | quote }}
ARCHIVE_PEERS: {{ join "," $s.peers | quote }}
ARCHIVE_FIND_MAX_MATCHES: {{ $s.findMaxMatches | int64 | quote }}
ARCHIVE_PUBLIC_URL: {{ $s.publicUrl | quote }}
ARCHIVE_CORS_ORIGINS: {{ join "," $s.corsOrigins | quote }}
ARCHIVE_STOW_MAX_BYTES: {{ $s.stowMaxBytes | int64 | quote }}
ARCHIVE_OBJECT_CACHE_BYTES: {{ $s.objectCacheBytes | int64 | quote }}
ARCHIVE_HTTP_PORT: {{ .Values.ports.http | int64 | quote }}
ARCHIVE_METRICS_PORT: {{ .Values.ports.metrics | int64 | quote }}
{{- $oidc := .Values.auth.oidc }}
{{- if $oidc.issuer }}
{{- if not (hasPrefix "https://" $oidc.issuer) }}
{{- fail (printf "auth.oidc.issuer must be an https:// URL, got %q" $oidc.issuer) }}
{{- end }}
{{- if not $oidc.audience }}
{{- fail "auth.oidc.audience is required with auth.oidc.issuer (the audience the archive's access tokens name)" }}
{{- end }}
{{- end }}
ARCHIVE_OIDC_ISSUER: {{ $oidc.issuer | quote }}
ARCHIVE_OIDC_AUDIENCE: {{ $oidc.audience | quote }}
ARCHIVE_OIDC_ROLES_CLAIM: {{ $oidc.rolesClaim | quote }}
ARCHIVE_HTTP_INSECURE_OPEN: {{ .Values.auth.insecureOpen | toString | quote }}
{{- if .Values.auth.tlsSecret }}
ARCHIVE_HTTP_TLS_CERT: {{ printf "%s/tls.crt" (include "dicom-archive.httpTlsDir" .) | quote }}
ARCHIVE_HTTP_TLS_KEY: {{ printf "%s/tls.key" (include "dicom-archive.httpTlsDir" .) | quote }}
{{- end }}
ARCHIVE_ALLOWED_AETS: {{ join "," $s.allowedAets | quote }}
ARCHIVE_ALLOWED_NETWORKS: {{ join "," $s.allowedNetworks | quote }}
ARCHIVE_MAX_ASSOCIATIONS: {{ $s.maxAssociations | int64 | quote }}
ARCHIVE_MAX_PDU: {{ $s.maxPdu | int64 | quote }}
ARCHIVE_NETWORK_TIMEOUT: {{ $s.networkTimeout | toString | quote }}
ARCHIVE_ACSE_TIMEOUT: {{ $s.acseTimeout | toString | quote }}
ARCHIVE_DIMSE_TIMEOUT: {{ $s.dimseTimeout | toString | quote }}
ARCHIVE_STORE_TIMEOUT: {{ $s.storeTimeout | toString | quote }}
ARCHIVE_QUERY_TIMEOUT: {{ $s.queryTimeout | toString | quote }}
ARCHIVE_DUPLICATE_POLICY: {{ $s.duplicatePolicy | quote }}
ARCHIVE_DELIVERY_LIMIT: {{ $s.deliveryLimit | int64 | quote }}
ARCHIVE_INDEXER_BATCH: {{ $s.indexerBatch | int64 | quote }}
ARCHIVE_INDEXER_LINGER: {{ $s.indexerLinger | toString | quote }}
ARCHIVE_INDEXER_PREFETCH: {{ $s.indexerPrefetch | int64 | quote }}
ARCHIVE_QUERY_LIMIT: {{ $s.queryLimit | int64 | quote }}
ARCHIVE_STUDY_STABLE_SECONDS: {{ $s.studyStableSeconds | toString | quote }}
ARCHIVE_FORWARD_ATTEMPTS: {{ $s.forwardAttempts | int64 | quote }}
ARCHIVE_FORWARD_BATCH: {{ $s.forwardBatch | int64 | quote }}
{{- if .Values.routing.rules }}
ARCHIVE_ROUTING_RULES: {{ include "dicom-archive.routingRulesFile" . | quote }}
{{- end }}
ARCHIVE_WORKERS: "1"
{{- $tls := .Values.dicomTls }}
{{- if $tls.enabled }}
{{- $_ := required "dicomTls.secretName is required: a kubernetes.io/tls Secret with tls.crt, tls.key (and ca.crt for mutual TLS)" $tls.secretName }}
ARCHIVE_DICOM_TLS_PORT: {{ $tls.port | int64 | quote }}
ARCHIVE_QUERY_DICOM_TLS_PORT: {{ $tls.port | int64 | quote }}
ARCHIVE_TLS_CERT: {{ printf "%s/tls.crt" (include "dicom-archive.dicomTlsDir" .) | quote }}
ARCHIVE_TLS_KEY: {{ printf "%s/tls.key" (include "dicom-archive.dicomTlsDir" .) | quote }}
{{- if $tls.mutual }}
ARCHIVE_TLS_CLIENT_CA: {{ printf "%s/ca.crt" (include "dicom-archive.dicomTlsDir" .) | quote }}
{{- end }}
{{- else if not $tls.plainPort }}
{{- fail "dicomTls.plainPort=false needs dicomTls.enabled: the archive would have no DICOM port" }}
{{- end }}
ARCHIVE_DICOM_PLAIN: {{ $tls.plainPort | toString | quote }}
{{- if .Values.aeConfig }}
ARCHIVE_AE_CONFIG: {{ include "dicom-archive.aeConfigFile" . | quote }}
{{- end }}
ARCHIVE_LOG_LEVEL: {{ $s.logLevel | quote }}
ARCHIVE_LOG_FORMAT: {{ $s.logFormat | quote }}
{{- with .Values.audit }}
ARCHIVE_AUDIT_SYSLOG: {{ .syslog | quote }}
ARCHIVE_AUDIT_FILE: {{ printf "%s/audit/audit.log" $.Values.dataDir | quote }}
ARCHIVE_AUDIT_FILE_MAX_BYTES: {{ .fileMaxBytes | int64 | quote }}
ARCHIVE_AUDIT_FILE_KEEP: {{ .fileKeep | int64 | quote }}
ARCHIVE_AUDIT_SOURCE_ID: {{ .sourceId | quote }}
{{- if .tlsSecret }}
ARCHIVE_AUDIT_TLS_CA: "/etc/dicom-archive/audit-tls/ca.crt"
{{- if .clientCertificate }}
ARCHIVE_AUDIT_TLS_CERT: "/etc/dicom-archive/audit-tls/tls.crt"
ARCHIVE_AUDIT_TLS_KEY: "/etc/dicom-archive/audit-tls/tls.key"
{{- end }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.extraConfig }}
{{- if not (hasPrefix "ARCHIVE_" $name) }}
{{- fail (printf "extraConfig: %q is not an ARCHIVE_* setting" $name) }}
{{- end }}
{{- if has $name (list "ARCHIVE_S3_ACCESS_KEY" "ARCHIVE_S3_SECRET_KEY" "ARCHIVE_QUEUE" "ARCHIVE_CATALOG" "ARCHIVE_SEARCH") }}
{{- fail (printf "extraConfig: %s holds credentials; set it under backends (or in existingSecret)" $name) }}
{{- end }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Where the DICOM TLS Secret, the AE configuration, the forwarding rules and the destinations'
credentials (routing.credentialsSecret) are mounted. */}}
{{- define "dicom-archive.dicomTlsDir" -}}/etc/dicom-archive/tls{{- end }}
{{- define "dicom-archive.aeConfigFile" -}}/etc/dicom-archive/ae/aes.yaml{{- end }}
{{- define "dicom-archive.routingRulesFile" -}}/etc/dicom-archive/routing/rules.yaml{{- end }}
{{- define "dicom-archive.credentialsDir" -}}/etc/dicom-archive/forward-credentials{{- end }}

{{/*
"true" when role .role uses .what (call with (dict "role" ROLE "what" WHAT)):
  dicom     listens for DICOM (its ports)
  dicomTls  the DICOM TLS Secret: serves TLS, or presents the archive's certificate to TLS peers
            (the forwarder, when it opens associations to them)
  aeConfig  loads ARCHIVE_AE_CONFIG (access rules, peers, forwarding destinations); the files its
            entries name (token_file, password_file, tls ca/cert/key) are checked wherever it is
            loaded, so the credentials Secret goes with it
  rules     ARCHIVE_ROUTING_RULES: the indexer evaluates them, the forwarder consumes their
            destinations' queues; the query pods get the file too (manual sends name the same
            destinations, though the role itself checks them against the peers only)
serve runs every role in one pod.
*/}}
{{- define "dicom-archive.roleUses" -}}
{{- $uses := dict
  "dicom" (list "scp" "query" "serve")
  "dicomTls" (list "scp" "query" "serve" "forwarder")
  "aeConfig" (list "scp" "query" "serve" "indexer" "forwarder")
  "rules" (list "query" "serve" "indexer" "forwarder") }}
{{- if has .role (index $uses .what) }}true{{ end }}
{{- end }}

{{/*
The forward queues, as a JSON list: <settings.queueName>.forward.<name> for every configured
destination (settings.peers, aeConfig.aes entries with host or url: the forwarder consumes all of
them) and every destination of routing.rules (a DICOMweb URL by web-<first 16 hex digits of the
SHA-256 of the URL>), each once. As archive.compose.forward_queue names them. Fails on a rule
destination that is neither configured nor a URL (the indexer and forwarder would refuse to start).
*/}}
{{- define "dicom-archive.forwardQueues" -}}
{{- $configured := list }}
{{- range .Values.settings.peers }}
{{- $configured = append $configured (splitList "@" . | first | trim) }}
{{- end }}
{{- range $aet, $entry := (.Values.aeConfig.aes | default dict) }}
{{- if and (kindIs "map" $entry) (or $entry.host $entry.url) }}
{{- $configured = append $configured (trim $aet) }}
{{- end }}
{{- end }}
{{- $names := $configured }}
{{- range $rule := .Values.routing.rules }}
{{- $destinations := $rule.destinations }}
{{- if kindIs "string" $destinations }}{{ $destinations = list $destinations }}{{ end }}
{{- range $destinations }}
{{- $d := trim (toString .) }}
{{- if or (hasPrefix "http://" $d) (hasPrefix "https://" $d) }}
{{- $names = append $names (printf "web-%s" (regexReplaceAll "/+$" $d "" | sha256sum | trunc 16)) }}
{{- else if has $d $configured }}
{{- $names = append $names $d }}
{{- else }}
{{- fail (printf "routing.rules: rule %v: destination %q is not a configured peer (settings.peers, or an aeConfig.aes entry with host and port or url) nor a DICOMweb URL" $rule.name $d) }}
{{- end }}
{{- end }}
{{- end }}
{{- $queues := list }}
{{- range uniq $names }}
{{- $queues = append $queues (printf "%s.forward.%s" $.Values.settings.queueName .) }}
{{- end }}
{{- toJson $queues }}
{{- end }}

{{/* Credentials (Secret data, base64). Only rendered when existingSecret is empty. */}}
{{- define "dicom-archive.secretData" -}}
{{- $b := .Values.backends -}}
{{- $queue := required "backends.queue is required (amqp://user:pass@host:port/vhost) unless existingSecret is set" $b.queue -}}
{{- $catalog := required "backends.catalog is required (postgresql://user:pass@host:port/db) unless existingSecret is set" $b.catalog -}}
{{- $search := required "backends.search is required (http(s)://host:port) unless existingSecret is set" $b.search -}}
{{- if not (or (hasPrefix "amqp://" $queue) (hasPrefix "amqps://" $queue)) }}
{{- fail "backends.queue must be an amqp:// or amqps:// URL: the embedded queue cannot be shared by pods" }}
{{- end }}
{{- if not (or (hasPrefix "postgresql://" $catalog) (hasPrefix "postgres://" $catalog)) }}
{{- fail "backends.catalog must be a postgresql:// URL: the embedded catalog cannot be shared by pods" }}
{{- end }}
{{- if not (or (hasPrefix "http://" $search) (hasPrefix "https://" $search)) -}}
{{- fail "backends.search must be an http(s):// OpenSearch URL: the embedded index cannot be shared by pods" -}}
{{- end -}}
ARCHIVE_S3_ACCESS_KEY: {{ required "backends.s3AccessKey is required unless existingSecret is set" $b.s3AccessKey | b64enc | quote }}
ARCHIVE_S3_SECRET_KEY: {{ required "backends.s3SecretKey is required unless existingSecret is set" $b.s3SecretKey | b64enc | quote }}
ARCHIVE_QUEUE: {{ $queue | b64enc | quote }}
ARCHIVE_CATALOG: {{ $catalog | b64enc | quote }}
ARCHIVE_SEARCH: {{ $search | b64enc | quote }}
{{- end }}

{{/*
Pod template annotations: config checksums (roll pods when settings change) and Prometheus
scrape annotations. Call with (dict "ctx" $ "extra" .podAnnotations "metrics" true).
*/}}
{{- define "dicom-archive.podAnnotations" -}}
{{- $ctx := .ctx -}}
checksum/config: {{ include "dicom-archive.configData" $ctx | sha256sum }}
{{- if not (or $ctx.Values.existingSecret (include "dicom-archive.standalone" $ctx)) }}
checksum/secret: {{ include "dicom-archive.secretData" $ctx | sha256sum }}
{{- end }}
{{- if and .metrics $ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ $ctx.Values.ports.metrics | int64 | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with $ctx.Values.aeConfig }}
checksum/ae-config: {{ toYaml . | sha256sum }}
{{- end }}
{{- with $ctx.Values.routing.rules }}
checksum/routing: {{ toYaml . | sha256sum }}
{{- end }}
{{- with $ctx.Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The archive container and its volumes, shared by the role Deployments and the migrate Job.
Call with (dict "ctx" $ "role" "scp" "configMap" NAME "secret" NAME "resources" RES "serving" BOOL).
"serving" adds ports, probes and the preStop sleep (long-running roles only).
*/}}
{{- define "dicom-archive.container" -}}
{{- $ctx := .ctx -}}
- name: {{ .role }}
  image: {{ include "dicom-archive.image" $ctx | quote }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  # the role's entry script (cmd/ in the repository, copied there by the Dockerfile)
  command: [{{ printf "/opt/dicom-archive/cmd/%s" .role | quote }}]
  envFrom:
    - configMapRef:
        name: {{ .configMap }}
    {{- with .secret }}
    # Listed last: its keys win over the ConfigMap's.
    - secretRef:
        name: {{ . }}
    {{- end }}
  {{- if .serving }}
  ports:
    - name: http
      containerPort: {{ $ctx.Values.ports.http }}
      protocol: TCP
    - name: metrics
      containerPort: {{ $ctx.Values.ports.metrics }}
      protocol: TCP
    {{- if include "dicom-archive.roleUses" (dict "role" .role "what" "dicom") }}
    {{- if $ctx.Values.dicomTls.plainPort }}
    - name: dicom
      containerPort: {{ $ctx.Values.ports.dicom }}
      protocol: TCP
    {{- end }}
    {{- if $ctx.Values.dicomTls.enabled }}
    - name: dicom-tls
      containerPort: {{ $ctx.Values.dicomTls.port }}
      protocol: TCP
    {{- end }}
    {{- end }}
  lifecycle:
    preStop:
      exec:
        command: ["sleep", {{ $ctx.Values.preStopSleepSeconds | int64 | quote }}]
  startupProbe:
    httpGet: {path: /healthz, port: http{{ if $ctx.Values.auth.tlsSecret }}, scheme: HTTPS{{ end }}}
    {{- toYaml $ctx.Values.probes.startup | nindent 4 }}
  livenessProbe:
    httpGet: {path: /healthz, port: http{{ if $ctx.Values.auth.tlsSecret }}, scheme: HTTPS{{ end }}}
    {{- toYaml $ctx.Values.probes.liveness | nindent 4 }}
  readinessProbe:
    httpGet: {path: /readyz, port: http{{ if $ctx.Values.auth.tlsSecret }}, scheme: HTTPS{{ end }}}
    {{- toYaml $ctx.Values.probes.readiness | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $ctx.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: data
      mountPath: {{ $ctx.Values.dataDir }}
    - name: tmp
      mountPath: /tmp
    {{- if $ctx.Values.audit.tlsSecret }}
    - name: audit-tls
      mountPath: /etc/dicom-archive/audit-tls
      readOnly: true
    {{- end }}
    {{- if and .serving $ctx.Values.auth.tlsSecret }}
    - name: http-tls
      mountPath: {{ include "dicom-archive.httpTlsDir" $ctx }}
      readOnly: true
    {{- end }}
    {{- if and $ctx.Values.dicomTls.enabled (include "dicom-archive.roleUses" (dict "role" .role "what" "dicomTls")) }}
    - name: dicom-tls
      mountPath: {{ include "dicom-archive.dicomTlsDir" $ctx }}
      readOnly: true
    {{- end }}
    {{- if include "dicom-archive.roleUses" (dict "role" .role "what" "aeConfig") }}
    {{- if $ctx.Values.aeConfig }}
    - name: ae-config
      mountPath: {{ include "dicom-archive.aeConfigFile" $ctx | dir }}
      readOnly: true
    {{- end }}
    {{- if $ctx.Values.routing.credentialsSecret }}
    - name: forward-credentials
      mountPath: {{ include "dicom-archive.credentialsDir" $ctx }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if and $ctx.Values.routing.rules (include "dicom-archive.roleUses" (dict "role" .role "what" "rules")) }}
    # the directory, not the file (subPath): the kubelet updates it in place and the archive re-reads it
    - name: routing
      mountPath: {{ include "dicom-archive.routingRulesFile" $ctx | dir }}
      readOnly: true
    {{- end }}
{{- end }}

{{/* Call with (dict "sizeLimit" SIZE "audit" .Values.audit "tlsSecret" HTTPS-SECRET "ctx" $ "role" ROLE); tlsSecret "": no HTTPS volume; ctx and role for the volumes of what the role uses (roleUses); "claim" NAME: the data directory on that PersistentVolumeClaim instead of an emptyDir. */}}
{{- define "dicom-archive.volumes" -}}
- name: data
  {{- if .claim }}
  persistentVolumeClaim:
    claimName: {{ .claim }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ .sizeLimit }}
  {{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- with .audit }}{{- if .tlsSecret }}
- name: audit-tls
  secret:
    secretName: {{ .tlsSecret }}
    defaultMode: 0440
{{- end }}{{- end }}
{{- with .tlsSecret }}
- name: http-tls
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- with .ctx }}
{{- $uses := dict "role" (default "" $.role) }}
{{- if and .Values.dicomTls.enabled (include "dicom-archive.roleUses" (set $uses "what" "dicomTls")) }}
- name: dicom-tls
  secret:
    secretName: {{ .Values.dicomTls.secretName }}
    defaultMode: 0440
{{- end }}
{{- if include "dicom-archive.roleUses" (set $uses "what" "aeConfig") }}
{{- if .Values.aeConfig }}
- name: ae-config
  configMap:
    name: {{ include "dicom-archive.fullname" . }}-ae-config
{{- end }}
{{- with .Values.routing.credentialsSecret }}
- name: forward-credentials
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- if and .Values.routing.rules (include "dicom-archive.roleUses" (set $uses "what" "rules")) }}
- name: routing
  configMap:
    name: {{ include "dicom-archive.fullname" . }}-routing
{{- end }}
{{- end }}
{{- end }}

{{/* Pod-level fields shared by every pod of the chart. */}}
{{- define "dicom-archive.podSpecCommon" -}}
{{- $ctx := . -}}
automountServiceAccountToken: false
{{- with $ctx.Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
enableServiceLinks: false
{{- with $ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $ctx.Values.podSecurityContext | nindent 2 }}
{{- end }}

{{/* Scheduling: the role's own settings, else the chart-wide ones. Call with (dict "ctx" $ "r" ROLEVALUES). */}}
{{- define "dicom-archive.scheduling" -}}
{{- $g := .ctx.Values -}}
{{- with (default $g.nodeSelector .r.nodeSelector) }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $g.tolerations .r.tolerations) }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with (default $g.affinity .r.affinity) }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .r.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* "true" in mode standalone (one pod running serve), "" in mode distributed. */}}
{{- define "dicom-archive.standalone" -}}
{{- if eq .Values.mode "standalone" }}true{{ end }}
{{- end }}

{{/* The standalone pod's claim: standalone.persistence.existingClaim, else the chart's. */}}
{{- define "dicom-archive.standaloneClaim" -}}
{{- default (printf "%s-data" (include "dicom-archive.fullname" .)) .Values.standalone.persistence.existingClaim }}
{{- end }}

{{/* The Service that answers HTTP: the query role's, or the standalone pod's. */}}
{{- define "dicom-archive.httpService" -}}
{{- include "dicom-archive.fullname" . }}{{ if not (include "dicom-archive.standalone" .) }}-query{{ end }}
{{- end }}
