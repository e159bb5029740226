{{/*
Pod template of the batch predictions (the Job of batchPredict.enabled and the suspended CronJob
`make batch-job` instantiates): `python -m training_job.batch_predict` classifies the test split
under the data URI with a published model (a prefix: its champion) and writes one CSV row per
product to the output URI. Runs with the training user's S3 credentials (read models and
datasets, write datasets); its own component label (batch-predict), so it gets neither the
training pods' API-server egress nor their rollout ServiceAccount, and no API key: it runs the
model in-process and never calls the predictor.
Usage: include "rakuten-serving.batchPredict.podTemplate" (dict "context" $ "output" $uri)
*/}}
{{- define "rakuten-serving.batchPredict.podTemplate" -}}
{{- $ctx := .context -}}
{{- with .context -}}
{{- $b := .Values.batchPredict }}
{{- $modelUri := default (include "rakuten-serving.modelUri" .) $b.modelUri }}
{{- $dataUri := include "rakuten-serving.batchPredict.dataUri" . }}
metadata:
  labels:
    {{- include "rakuten-serving.labels" (dict "context" $ctx "component" "batch-predict") | nindent 4 }}
    rakuten-serving/job: batch-predict
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "rakuten-serving.workloadServiceAccountName" . }}
  automountServiceAccountToken: false
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
  initContainers:
    - name: wait-for-model
      image: {{ include "rakuten-serving.image" (dict "image" .Values.training.image "global" .Values.global) }}
      imagePullPolicy: {{ .Values.training.image.pullPolicy }}
      command:
        - python
        - -m
        - rakuten_common.wait_for
        - --model={{ $modelUri }}
        - --bucket={{ list (include "rakuten-serving.s3.bucketOf" $dataUri) (include "rakuten-serving.s3.bucketOf" $.output) | compact | uniq | join "," }}
        - --timeout={{ .Values.training.waitTimeoutSeconds }}
      env:
        - name: HOME
          value: /tmp
        {{- include "rakuten-serving.s3.env" (dict "context" $ctx "component" "training") | nindent 8 }}
      resources:
        {{- toYaml .Values.training.initResources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.training.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
  containers:
    - name: batch-predict
      image: {{ include "rakuten-serving.image" (dict "image" .Values.training.image "global" .Values.global) }}
      imagePullPolicy: {{ .Values.training.image.pullPolicy }}
      command: ["python", "-m", "training_job.batch_predict"]
      args:
        - --model-uri={{ $modelUri }}
        - --data-dir={{ $dataUri }}
        - --output={{ $.output }}
        - --top-k={{ $b.topK }}
        {{- with $b.extraArgs }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      env:
        {{- if contains "$(JOB_NAME)" $.output }}
        # the Job's name (kubectl create job --from=cronjob/...): one CSV per run
        - name: JOB_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.labels['batch.kubernetes.io/job-name']
        {{- end }}
        - name: CACHE_DIR
          value: /data/cache
        - name: MODEL_CACHE_DIR
          value: /tmp/rakuten-model-cache
        - name: HOME
          value: /tmp
        - name: TF_CPP_MIN_LOG_LEVEL
          value: "2"
        {{- include "rakuten-serving.cpuLimitEnv" (dict "container" "batch-predict" "resources" $b.resources) | nindent 8 }}
        {{- include "rakuten-serving.s3.env" (dict "context" $ctx "component" "training") | nindent 8 }}
      resources:
        {{- toYaml $b.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.training.containerSecurityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /data
        - name: tmp
          mountPath: /tmp
  volumes:
    - name: data
      emptyDir:
        sizeLimit: {{ .Values.training.data.emptyDirSizeLimit }}
    {{- include "rakuten-serving.tmpVolume" (dict "sizeLimit" "2Gi") | nindent 4 }}
{{- end }}
{{- end -}}
