{{/* vim: set filetype=mustache: */}}

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
{{- range $uri := list .Values.training.data.uri (include "rakuten-serving.batchPredict.dataUri" .) (include "rakuten-serving.batchPredict.outputUri" .) .Values.predictor.capture.uri -}}
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
{{- /* putPrefixes: s3://bucket/prefix URIs where the user may only create objects (inference capture). */}}
{{- range .putPrefixes -}}
{{- $path := trimSuffix "/" (trimPrefix "s3://" .) -}}
{{- $statements = append $statements (dict "Effect" "Allow" "Action" (list "s3:PutObject") "Resource" (list (printf "arn:aws:s3:::%s/*" $path))) -}}
{{- end -}}
{{- dict "Version" "2012-10-17" "Statement" $statements | toPrettyJson -}}
{{- end -}}
