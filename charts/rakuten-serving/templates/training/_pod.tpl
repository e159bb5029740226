{{/*
Pod template of the training Job and CronJob: wait for the buckets (and MLflow), then
`python -m training_job`, which trains, logs to MLflow and publishes a new version under
MODEL_URI (manifest.json written last). Data: training.data.uri (s3://, read with the training
user's credentials, cached under /data) or, without it, a sample generated into /data.
*/}}
{{- define "rakuten-serving.training.podTemplate" -}}
metadata:
  labels:
    {{- include "rakuten-serving.labels" (dict "context" $ "component" "training") | nindent 4 }}
    {{- include "rakuten-serving.training.promotionLabels" . | indent 4 }}
  {{- with .Values.training.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "rakuten-serving.training.serviceAccountName" . }}
  automountServiceAccountToken: {{ include "rakuten-serving.training.rolloutEnabled" . | eq "true" }}
  {{- with include "rakuten-serving.imagePullSecrets" . }}{{ . | trim | nindent 2 }}{{ end }}
  securityContext:
    {{- toYaml .Values.training.podSecurityContext | nindent 4 }}
  {{- with .Values.training.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.training.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.training.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  initContainers:
    - name: wait-for-dependencies
      image: {{ include "rakuten-serving.image" (dict "image" .Values.training.image "global" .Values.global) }}
      imagePullPolicy: {{ .Values.training.image.pullPolicy }}
      command:
        - python
        - -m
        - rakuten_common.wait_for
        - --bucket={{ list .Values.s3.bucket (include "rakuten-serving.s3.bucketOf" .Values.training.data.uri) | compact | uniq | join "," }}
        {{- if .Values.mlflow.enabled }}
        - --url={{ include "rakuten-serving.mlflow.trackingUri" . }}/health
        {{- end }}
        - --timeout={{ .Values.training.waitTimeoutSeconds }}
      env:
        - name: HOME
          value: /tmp
        {{- include "rakuten-serving.s3.env" (dict "context" $ "component" "training") | nindent 8 }}
      resources:
        {{- toYaml .Values.training.initResources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.training.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  containers:
    - name: train
      image: {{ include "rakuten-serving.image" (dict "image" .Values.training.image "global" .Values.global) }}
      imagePullPolicy: {{ .Values.training.image.pullPolicy }}
      command: ["python", "-m", "training_job"]
      {{- with .Values.training.extraArgs }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      env:
        # decoded images (and a copy of an s3:// dataset) live on the data volume, not in /tmp
        - name: CACHE_DIR
          value: /data/cache
        {{- if .Values.training.data.uri }}
        - name: DATA_DIR
          value: {{ .Values.training.data.uri | quote }}
        {{- else }}
        - name: DATA_DIR
          value: /data
        - name: GENERATE_SAMPLE_ROWS
          value: {{ .Values.training.data.generateSampleRows | int64 | quote }}
        {{- end }}
        - name: MODEL_URI
          value: {{ include "rakuten-serving.modelUri" . | quote }}
        - name: EPOCHS
          value: {{ .Values.training.epochs | int64 | quote }}
        - name: BATCH_SIZE
          value: {{ .Values.training.batchSize | int64 | quote }}
        - name: IMAGE_SIZE
          value: {{ .Values.training.imageSize | int64 | quote }}
        - name: MLFLOW_TRACKING_URI
          value: {{ include "rakuten-serving.mlflow.trackingUri" . | quote }}
        - name: MLFLOW_EXPERIMENT_NAME
          value: {{ .Values.training.experimentName | quote }}
        - name: HOME
          value: /tmp
        - name: MPLCONFIGDIR
          value: /tmp/matplotlib
        - name: TF_CPP_MIN_LOG_LEVEL
          value: "2"
        {{- include "rakuten-serving.cpuLimitEnv" (dict "container" "train" "resources" .Values.training.resources) | nindent 8 }}
        {{- include "rakuten-serving.training.promotionEnv" . | nindent 8 }}
        {{- include "rakuten-serving.s3.env" (dict "context" $ "component" "training") | nindent 8 }}
        {{- if include "rakuten-serving.training.rolloutEnabled" . }}
        {{- with include "rakuten-serving.apiKeyClient.env" . }}{{ . | trim | nindent 8 }}{{ end }}
        {{- end }}
        {{- with .Values.training.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      resources:
        {{- toYaml .Values.training.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.training.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /data
          {{- with .Values.training.data.subPath }}
          subPath: {{ . }}
          {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- if include "rakuten-serving.training.rolloutEnabled" . }}
        {{- with include "rakuten-serving.apiKeyClient.volumeMount" . }}{{ . | trim | nindent 8 }}{{ end }}
        {{- end }}
  volumes:
    - name: data
      {{- if .Values.training.data.existingClaim }}
      persistentVolumeClaim:
        claimName: {{ .Values.training.data.existingClaim }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ .Values.training.data.emptyDirSizeLimit }}
      {{- end }}
    {{- include "rakuten-serving.tmpVolume" (dict "sizeLimit" "2Gi") | nindent 4 }}
    {{- if include "rakuten-serving.training.rolloutEnabled" . }}
    {{- /* the rollout's smoke call is a client of the predictor: its API key (API_KEY_FILE) */}}
    {{- with include "rakuten-serving.apiKeyClient.volume" . }}{{ . | trim | nindent 4 }}{{ end }}
    {{- end }}
{{- end -}}
