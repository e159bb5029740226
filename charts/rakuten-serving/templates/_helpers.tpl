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

{{/* ---- Credentials and S3 wiring ---------------------------------------------------- */}}
{{/*
With the bundled MinIO, the root credentials (auth.*, Secret "<fullname>-s3") belong to MinIO and
its provisioning Job only; every other component has a MinIO user of its own, with a policy
limited to what it needs, in Secret "<fullname>-s3-<component>". With an external S3, auth.* is
the one credential every component uses.
*/}}

{{/* Secret with the root (or, external S3: the shared) AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. */}}
{{- define "rakuten-serving.secretName" -}}
{{- default (printf "%s-s3" (include "rakuten-serving.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}

{{/* The components that get a MinIO user of their own, and what each may do. */}}
{{- define "rakuten-serving.s3.components" -}}
predictor training mlflow
{{- end -}}

{{/* MinIO user name of a component. Usage: include "rakuten-serving.s3.user" (dict "context" $ "component" "training") */}}
{{- define "rakuten-serving.s3.user" -}}
{{- printf "%s-%s" (include "rakuten-serving.name" .context) .component -}}
{{- end -}}

{{/* Secret holding a component's S3 credentials (the keys KServe and boto3 read). Same usage. */}}
{{- define "rakuten-serving.s3.secretName" -}}
{{- if .context.Values.minio.enabled -}}
{{- printf "%s-s3-%s" (include "rakuten-serving.fullname" .context) .component -}}
{{- else -}}
{{- include "rakuten-serving.secretName" .context -}}
{{- end -}}
{{- end -}}

{{/* host:port of the S3 API, as KServe's s3-endpoint annotation wants it. */}}
{{- define "rakuten-serving.s3.endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{- .Values.s3.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "%s.%s:%d" (include "rakuten-serving.minio.fullname" .) .Release.Namespace (int .Values.minio.service.ports.api) -}}
{{- else -}}
{{- fail "s3.endpoint is required when minio.enabled is false" -}}
{{- end -}}
{{- end -}}

{{- define "rakuten-serving.s3.url" -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.s3.useHttps) (include "rakuten-serving.s3.endpoint" .) -}}
{{- end -}}

{{/* The annotations KServe's credential builder reads on the Secret (never on the ServiceAccount). */}}
{{- define "rakuten-serving.s3.kserveAnnotations" -}}
serving.kserve.io/s3-endpoint: {{ include "rakuten-serving.s3.endpoint" . | quote }}
serving.kserve.io/s3-usehttps: {{ ternary "1" "0" .Values.s3.useHttps | quote }}
serving.kserve.io/s3-verifyssl: {{ ternary "1" "0" .Values.s3.verifySsl | quote }}
serving.kserve.io/s3-region: {{ .Values.s3.region | quote }}
{{- end -}}

{{/* The one place the model location is defined: the training Job writes it, KServe reads it. */}}
{{- define "rakuten-serving.modelUri" -}}
{{- printf "s3://%s/%s" .Values.s3.bucket (trimAll "/" .Values.s3.prefix) -}}
{{- end -}}

{{/* Where MLflow stores run artifacts. */}}
{{- define "rakuten-serving.mlflow.artifactsDestination" -}}
{{- default (printf "s3://%s/artifacts" .Values.s3.mlflowBucket) .Values.mlflow.artifactsDestination -}}
{{- end -}}

{{/* Bucket of an s3://bucket/prefix URI (empty for anything else). */}}
{{- define "rakuten-serving.s3.bucketOf" -}}
{{- if hasPrefix "s3://" . -}}{{- (splitList "/" (trimPrefix "s3://" .)) | first -}}{{- end -}}
{{- end -}}

{{/* Buckets the provisioning Job creates: models, datasets, MLflow artifacts (and any bucket the data/output URIs name). */}}
{{- define "rakuten-serving.s3.buckets" -}}
{{- $buckets := list .Values.s3.bucket .Values.s3.datasetsBucket -}}
{{- if .Values.mlflow.enabled -}}
{{- $buckets = append $buckets (include "rakuten-serving.s3.bucketOf" (include "rakuten-serving.mlflow.artifactsDestination" .)) -}}
{{- end -}}
{{- range $uri := list .Values.training.data.uri (include "rakuten-serving.batchPredict.dataUri" .) (include "rakuten-serving.batchPredict.outputUri" .) -}}
{{- with include "rakuten-serving.s3.bucketOf" $uri -}}{{- $buckets = append $buckets . -}}{{- end -}}
{{- end -}}
{{- $buckets | compact | uniq | join " " -}}
{{- end -}}

{{/* Environment of an S3 client of the chart (boto3, mlflow, KServe-style variables).
     Usage: include "rakuten-serving.s3.env" (dict "context" $ "component" "training") */}}
{{- define "rakuten-serving.s3.env" -}}
{{- $secret := include "rakuten-serving.s3.secretName" . -}}
{{- with .context -}}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: AWS_SECRET_ACCESS_KEY
- name: AWS_ENDPOINT_URL
  value: {{ include "rakuten-serving.s3.url" . | quote }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ include "rakuten-serving.s3.url" . | quote }}
- name: S3_USE_HTTPS
  value: {{ ternary "1" "0" .Values.s3.useHttps | quote }}
- name: S3_VERIFY_SSL
  value: {{ ternary "1" "0" .Values.s3.verifySsl | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- end -}}
{{- end -}}

{{/* CPU_LIMIT from the container's limits.cpu (downward API): rakuten_common.cpu sizes the
     preprocessing pool and TensorFlow's threads from it. Knative gates fieldRef/resourceFieldRef
     behind a feature flag, so there the chart writes the limit itself.
     Usage: include "rakuten-serving.cpuLimitEnv" (dict "container" "train" "resources" $r "literal" false) */}}
{{- define "rakuten-serving.cpuLimitEnv" -}}
- name: CPU_LIMIT
{{- if .literal }}
  value: {{ required "resources.limits.cpu is required (threads are sized from it)" .resources.limits.cpu | toString | quote }}
{{- else }}
  valueFrom:
    resourceFieldRef:
      containerName: {{ .container }}
      resource: limits.cpu
{{- end }}
{{- end -}}

{{/* ---- Batch prediction --------------------------------------------------------------- */}}

{{- define "rakuten-serving.batchPredict.dataUri" -}}
{{- default .Values.training.data.uri .Values.batchPredict.dataUri -}}
{{- end -}}

{{- define "rakuten-serving.batchPredict.outputUri" -}}
{{- default (printf "s3://%s/predictions/%s-%d.csv" .Values.s3.datasetsBucket .Release.Name (int .Release.Revision)) .Values.batchPredict.outputUri -}}
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
{{- if eq .Values.predictor.deploymentMode "Knative" -}}user-port{{- else -}}http1{{- end -}}
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
{{- $annotations := $secret.metadata.annotations | default dict -}}
{{- if not (or (hasKey $annotations "serving.kserve.io/s3-endpoint") (hasKey ($secret.data | default dict) "S3_ENDPOINT")) -}}
{{- fail (printf "auth.existingSecret %q has no serving.kserve.io/s3-endpoint annotation: KServe's storage initializer builds the S3 endpoint from the Secret only, and would go to AWS. Annotate it: kubectl -n %s annotate secret %s serving.kserve.io/s3-endpoint=%s serving.kserve.io/s3-usehttps=%s" .Values.auth.existingSecret .Release.Namespace .Values.auth.existingSecret (include "rakuten-serving.s3.endpoint" .) (ternary "1" "0" .Values.s3.useHttps)) -}}
{{- end -}}
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

{{/* An IAM policy document: list and read (and with "write": put, delete, multipart) on "buckets". */}}
{{- define "rakuten-serving.minio.policy" -}}
{{- $bucketArns := list -}}
{{- $objectArns := list -}}
{{- range .buckets -}}
{{- $bucketArns = append $bucketArns (printf "arn:aws:s3:::%s" .) -}}
{{- $objectArns = append $objectArns (printf "arn:aws:s3:::%s/*" .) -}}
{{- end -}}
{{- $bucketActions := list "s3:GetBucketLocation" "s3:ListBucket" -}}
{{- $objectActions := list "s3:GetObject" -}}
{{- if .write -}}
{{- $bucketActions = append $bucketActions "s3:ListBucketMultipartUploads" -}}
{{- $objectActions = concat $objectActions (list "s3:PutObject" "s3:DeleteObject" "s3:AbortMultipartUpload" "s3:ListMultipartUploadParts") -}}
{{- end -}}
{{- $statements := list (dict "Effect" "Allow" "Action" $bucketActions "Resource" $bucketArns) (dict "Effect" "Allow" "Action" $objectActions "Resource" $objectArns) -}}
{{- dict "Version" "2012-10-17" "Statement" $statements | toPrettyJson -}}
{{- end -}}
