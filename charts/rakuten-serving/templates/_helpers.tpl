{{/* vim: set filetype=mustache: */}}

{{/*
Chart name, truncated to 63 characters (DNS label).
*/}}
{{- define "rakuten-serving.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Full name: <release>-<chart>, or the release name alone when it already contains the chart name.
Kept to 52 characters so that "-predictor", "-minio-bucket" etc. still fit in 63.
*/}}
{{- define "rakuten-serving.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "rakuten-serving.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Standard labels. Usage: include "rakuten-serving.labels" (dict "context" $ "component" "minio")
*/}}
{{- define "rakuten-serving.labels" -}}
helm.sh/chart: {{ include "rakuten-serving.chart" .context }}
{{ include "rakuten-serving.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
app.kubernetes.io/part-of: rakuten-serving
{{- with .context.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels (immutable once deployed). Usage as for "rakuten-serving.labels".
*/}}
{{- define "rakuten-serving.selectorLabels" -}}
app.kubernetes.io/name: {{ include "rakuten-serving.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/*
metadata.annotations from commonAnnotations merged with extra ones.
Usage: include "rakuten-serving.annotations" (dict "context" $ "extra" $someMap)
*/}}
{{- define "rakuten-serving.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (deepCopy (.context.Values.commonAnnotations | default dict)) -}}
{{- if $all }}
annotations:
  {{- toYaml $all | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
Image reference. Usage: include "rakuten-serving.image" (dict "image" .Values.minio.image "global" .Values.global)
registry/repository:tag, or @digest when a digest is given; global.imageRegistry overrides the registry.
*/}}
{{- define "rakuten-serving.image" -}}
{{- $registry := .image.registry -}}
{{- if and .global .global.imageRegistry -}}
{{- $registry = .global.imageRegistry -}}
{{- end -}}
{{- $repository := .image.repository -}}
{{- if $registry -}}
{{- $repository = printf "%s/%s" $registry .image.repository -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (toString .image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "rakuten-serving.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- end -}}

{{/* ---- Names of the objects --------------------------------------------------------- */}}

{{- define "rakuten-serving.minio.fullname" -}}
{{- printf "%s-minio" (include "rakuten-serving.fullname" .) -}}
{{- end -}}

{{- define "rakuten-serving.mlflow.fullname" -}}
{{- printf "%s-mlflow" (include "rakuten-serving.fullname" .) -}}
{{- end -}}

{{- define "rakuten-serving.training.fullname" -}}
{{- printf "%s-train" (include "rakuten-serving.fullname" .) -}}
{{- end -}}

{{/* The training Job of this release revision (templates/training/job.yaml), "" when none is rendered. */}}
{{- define "rakuten-serving.training.jobName" -}}
{{- $j := .Values.training.job -}}
{{- if and $j.enabled (or .Release.IsInstall $j.onUpgrade) -}}
{{- printf "%s-%d" (include "rakuten-serving.training.fullname" .) (int .Release.Revision) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Name of the InferenceService; KServe names its predictor Deployment/Service "<name>-predictor". */}}
{{- define "rakuten-serving.isvcName" -}}
{{- default (include "rakuten-serving.fullname" .) .Values.predictor.inferenceServiceName | trunc 45 | trimSuffix "-" -}}
{{- end -}}

{{/* In-cluster Service of the predictor that KServe creates (port 80 -> 8080). */}}
{{- define "rakuten-serving.predictorServiceName" -}}
{{- printf "%s-predictor" (include "rakuten-serving.isvcName" .) -}}
{{- end -}}

{{/* Labels KServe puts on the predictor pods (serving.kserve.io/inferenceservice + component). */}}
{{- define "rakuten-serving.predictorPodSelector" -}}
serving.kserve.io/inferenceservice: {{ include "rakuten-serving.isvcName" . }}
component: predictor
{{- end -}}

{{/* Name of the ServiceAccount of the predictor (lists the S3 Secret for the storage initializer). */}}
{{- define "rakuten-serving.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-predictor" (include "rakuten-serving.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ServiceAccount of the jobs, MinIO and MLflow: no API access, no token. */}}
{{- define "rakuten-serving.workloadServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- printf "%s-workload" (include "rakuten-serving.fullname" .) -}}
{{- else -}}
default
{{- end -}}
{{- end -}}

{{/* MLflow tracking URI given to training. */}}
{{- define "rakuten-serving.mlflow.trackingUri" -}}
{{- if .Values.mlflow.enabled -}}
{{- printf "http://%s:%d" (include "rakuten-serving.mlflow.fullname" .) (int .Values.mlflow.service.ports.http) -}}
{{- else -}}
{{- default "sqlite:////tmp/mlflow.db" .Values.mlflow.externalTrackingUri -}}
{{- end -}}
{{- end -}}

{{/* Host headers MLflow accepts: its Service names (with and without port) and localhost (port-forward, NodePort). */}}
{{- define "rakuten-serving.mlflow.allowedHosts" -}}
{{- $svc := include "rakuten-serving.mlflow.fullname" . -}}
{{- $hosts := list $svc (printf "%s:*" $svc) (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s:*" $svc .Release.Namespace) (printf "%s.%s.svc*" $svc .Release.Namespace) "localhost" "localhost:*" "127.0.0.1" "127.0.0.1:*" -}}
{{- concat $hosts .Values.mlflow.allowedHosts | uniq | join "," -}}
{{- end -}}

{{/* ---- Pod building blocks ---------------------------------------------------------- */}}

{{/* /tmp emptyDir (every container runs with a read-only root filesystem). */}}
{{- define "rakuten-serving.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .sizeLimit | default "256Mi" }}
{{- end -}}

{{/* Port of the predictor container that serves /metrics, as seen in the pod (Knative renames it). */}}
{{- define "rakuten-serving.predictor.metricsPortName" -}}
{{- if eq .Values.predictor.deploymentMode "Knative" -}}user-port{{- else if .Values.predictor.apiKeys.enabled -}}metrics{{- else -}}http1{{- end -}}
{{- end -}}

{{- define "rakuten-serving.predictor.apiKeysSecretName" -}}
{{- .Values.predictor.apiKeys.existingSecret | default (printf "%s-api-keys" (include "rakuten-serving.fullname" .)) -}}
{{- end -}}

{{/* Clients of the predictor (the training pods' rollout smoke call, the `helm test` pod) with
     predictor.apiKeys.enabled: the keys Secret mounted read-only, and API_KEY_FILE naming the
     file, whose first non-comment line is the key the V2 client sends. Empty without keys.
     "rakuten-serving.apiKeyClient.env", ".volumeMount" and ".volume" go together. */}}
{{- define "rakuten-serving.apiKeyClient.enabled" -}}
{{- if and .Values.predictor.enabled .Values.predictor.apiKeys.enabled -}}true{{- end -}}
{{- end -}}

{{- define "rakuten-serving.apiKeyClient.env" -}}
{{- if include "rakuten-serving.apiKeyClient.enabled" . }}
- name: API_KEY_FILE
  value: {{ printf "/etc/rakuten-serving/api-keys/%s" .Values.predictor.apiKeys.secretKey | quote }}
{{- end }}
{{- end -}}

{{- define "rakuten-serving.apiKeyClient.volumeMount" -}}
{{- if include "rakuten-serving.apiKeyClient.enabled" . }}
- name: api-keys
  mountPath: /etc/rakuten-serving/api-keys
  readOnly: true
{{- end }}
{{- end -}}

{{- define "rakuten-serving.apiKeyClient.volume" -}}
{{- if include "rakuten-serving.apiKeyClient.enabled" . }}
- name: api-keys
  secret:
    secretName: {{ include "rakuten-serving.predictor.apiKeysSecretName" . }}
    items:
      - key: {{ .Values.predictor.apiKeys.secretKey }}
        path: {{ .Values.predictor.apiKeys.secretKey }}
    defaultMode: 0440
{{- end }}
{{- end -}}

{{/* ---- Validation -------------------------------------------------------------------- */}}

{{/* "true" when the chart is rendered against a live cluster (helm install/upgrade, --dry-run=server),
     where lookup answers; empty under `helm template`, `helm lint` and a client-side dry run. */}}
{{- define "rakuten-serving.liveCluster" -}}
{{- if lookup "v1" "Namespace" "" "kube-system" -}}true{{- end -}}
{{- end -}}

{{- define "rakuten-serving.validateValues" -}}
{{- $p := .Values.predictor -}}
{{- if and (not .Values.minio.enabled) (not .Values.s3.endpoint) -}}
{{- fail "s3.endpoint is required when minio.enabled is false" -}}
{{- end -}}
{{- if and (eq $p.deploymentMode "Standard") (has $p.autoscaling.scaleMetric (list "concurrency" "rps")) (eq $p.autoscaling.autoscalerClass "hpa") -}}
{{- fail "predictor.autoscaling.scaleMetric concurrency/rps needs deploymentMode Knative (Standard + hpa scales on cpu or memory; use autoscalerClass keda for request load)" -}}
{{- end -}}
{{- if and (eq $p.deploymentMode "Knative") (has $p.autoscaling.scaleMetric (list "cpu" "memory")) -}}
{{- fail "predictor.autoscaling.scaleMetric must be concurrency or rps in Knative mode" -}}
{{- end -}}
{{- if gt (int $p.autoscaling.minReplicas) (int $p.autoscaling.maxReplicas) -}}
{{- fail "predictor.autoscaling.minReplicas must not exceed maxReplicas" -}}
{{- end -}}
{{- if and (eq (int $p.autoscaling.minReplicas) 0) (eq $p.deploymentMode "Standard") (eq $p.autoscaling.autoscalerClass "hpa") -}}
{{- fail "predictor.autoscaling.minReplicas 0 (scale to zero) needs deploymentMode Knative or autoscalerClass keda" -}}
{{- end -}}
{{- if regexMatch "^\\s*(avg|max|min|quantile|topk|bottomk)\\b" $p.autoscaling.keda.query -}}
{{- fail "predictor.autoscaling.keda.query must be a sum over the predictor pods: KServe gives KEDA only the threshold, so KEDA asks for ceil(query / threshold) replicas (AverageValue), and a per-pod average never grows with the load" -}}
{{- end -}}
{{- if and .Values.batchPredict.enabled (not (hasPrefix "s3://" (include "rakuten-serving.batchPredict.dataUri" .))) -}}
{{- fail "batchPredict.enabled needs the test data in S3: set batchPredict.dataUri or training.data.uri (s3://bucket/prefix)" -}}
{{- end -}}
{{- if include "rakuten-serving.liveCluster" . -}}
{{- include "rakuten-serving.validateCluster" . -}}
{{- end -}}
{{- end -}}

{{/* Checks against the live cluster: fail at install time with a clear message, instead of
     an object the API server or KServe rejects later. */}}
{{- define "rakuten-serving.validateCluster" -}}
{{- if and .Values.predictor.enabled (not (.Capabilities.APIVersions.Has "serving.kserve.io/v1beta1/InferenceService")) -}}
{{- fail "this cluster serves no serving.kserve.io/v1beta1 InferenceService: install KServe (>= 0.16) first (make addon-kserve), or set predictor.enabled=false" -}}
{{- end -}}
{{- if and .Values.monitoring.enabled (not .Values.monitoring.checkCapabilities) -}}
{{- range $kind, $on := dict "PodMonitor" $.Values.monitoring.podMonitor.enabled "PrometheusRule" $.Values.monitoring.prometheusRule.enabled -}}
{{- if and $on $.Values.predictor.enabled (not ($.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" $kind))) -}}
{{- fail (printf "this cluster serves no monitoring.coreos.com/v1 %s (Prometheus Operator CRDs): install kube-prometheus-stack first (make addon-monitoring), set monitoring.checkCapabilities=true to skip the monitors the cluster cannot take, or monitoring.enabled=false" $kind) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and (not .Values.minio.enabled) .Values.auth.existingSecret .Values.predictor.enabled -}}
{{- $secret := lookup "v1" "Secret" .Release.Namespace .Values.auth.existingSecret -}}
{{- if not $secret -}}
{{- fail (printf "auth.existingSecret %q does not exist in namespace %s" .Values.auth.existingSecret .Release.Namespace) -}}
{{- end -}}
{{- /* Its serving.kserve.io/s3-* annotations are not required: the chart sets no storageUri, so
     KServe injects no storage initializer (predictor_custom.go reads only STORAGE_URI) and nothing
     reads them; NOTES.txt says when they would matter. */}}
{{- end -}}
{{- end -}}

{{/* ---- NetworkPolicy building blocks ---------------------------------------------- */}}

{{/* Egress to the cluster DNS (any resolver on port 53: kube-dns, node-local-dns). */}}
{{- define "rakuten-serving.networkPolicy.dnsEgress" -}}
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* Egress to the S3 API: the bundled MinIO pods, or any address on the external endpoint's port. */}}
{{- define "rakuten-serving.networkPolicy.s3Egress" -}}
{{- if .Values.minio.enabled }}
- to:
    - podSelector:
        matchLabels:
          {{- include "rakuten-serving.selectorLabels" (dict "context" $ "component" "minio") | nindent 10 }}
  ports:
    - port: {{ .Values.minio.containerPorts.api }}
      protocol: TCP
{{- else }}
{{- $port := regexFind "[0-9]+$" .Values.s3.endpoint | default (ternary "443" "80" .Values.s3.useHttps) }}
- ports:
    - port: {{ $port }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/* Labels of every pod of this release (the chart's own and, via spec.predictor.labels, the predictor's). */}}
{{- define "rakuten-serving.networkPolicy.releasePods" -}}
app.kubernetes.io/name: {{ include "rakuten-serving.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
