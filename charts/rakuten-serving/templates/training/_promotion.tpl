{{/*
Model lifecycle of the training pods: after training, the promotion gate (PROMOTE) and the
rollout of a new champion to the InferenceService through the Kubernetes API (its own
ServiceAccount, bound to the namespaced Role of templates/training/rbac.yaml).
*/}}

{{/* "true" when the training pods roll new champions out (and so need API access). */}}
{{- define "rakuten-serving.training.rolloutEnabled" -}}
{{- $p := .Values.training.promotion -}}
{{- if and $p.enabled $p.rollout.enabled .Values.predictor.enabled -}}true{{- end -}}
{{- end -}}

{{/* Its own ServiceAccount when it rolls out (the only one bound to the rollout Role). */}}
{{- define "rakuten-serving.training.serviceAccountName" -}}
{{- if include "rakuten-serving.training.rolloutEnabled" . -}}
{{- printf "%s-training" (include "rakuten-serving.fullname" .) -}}
{{- else -}}
{{- include "rakuten-serving.workloadServiceAccountName" . -}}
{{- end -}}
{{- end -}}

{{/* Pod labels: a client of the predictor (its NetworkPolicy) when the rollout smoke-tests it. */}}
{{- define "rakuten-serving.training.promotionLabels" -}}
{{- if include "rakuten-serving.training.rolloutEnabled" . }}
{{ printf "%s-client" (include "rakuten-serving.fullname" .) }}: "true"
{{- end }}
{{- end -}}

{{/* Environment of the train container: python -m training_job.promote's settings. */}}
{{- define "rakuten-serving.training.promotionEnv" -}}
{{- $p := .Values.training.promotion -}}
- name: PROMOTE
  value: {{ ternary "true" "false" $p.enabled | quote }}
{{- if $p.enabled }}
- name: PROMOTE_TOLERANCE
  value: {{ $p.tolerance | toString | quote }}
- name: PROMOTE_RECALL_FLOOR
  value: {{ $p.recallFloor | toString | quote }}
- name: PROMOTE_MIN_CLASS_SUPPORT
  value: {{ $p.minClassSupport | int64 | quote }}
{{- end }}
{{- if include "rakuten-serving.training.rolloutEnabled" . }}
- name: INFERENCE_SERVICE
  value: {{ include "rakuten-serving.isvcName" . | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: ROLLOUT_TIMEOUT_SECONDS
  value: {{ $p.rollout.timeoutSeconds | int64 | quote }}
- name: ROLLOUT_CANARY_PERCENT
  value: {{ $p.rollout.canaryPercent | int64 | quote }}
- name: ROLLOUT_SMOKE_TIMEOUT_SECONDS
  value: {{ $p.rollout.smokeTimeoutSeconds | int64 | quote }}
{{- /* one smoke call waits as long as the route does: a revision scaled to zero answers after its cold start */}}
- name: ROLLOUT_SMOKE_CALL_TIMEOUT_SECONDS
  value: {{ .Values.predictor.timeout | int64 | quote }}
{{- if ne .Values.predictor.deploymentMode "Knative" }}
- name: ROLLOUT_SMOKE_URL
  value: {{ printf "http://%s.%s.svc.cluster.local" (include "rakuten-serving.predictorServiceName" .) .Release.Namespace | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Job spec: a rollout that failed and was rolled back (exit 4) is not retried by retraining. */}}
{{- define "rakuten-serving.training.podFailurePolicy" -}}
{{- if .Values.training.promotion.enabled }}
podFailurePolicy:
  rules:
    - action: FailJob
      onExitCodes:
        containerName: train
        operator: In
        values: [4]
{{- end }}
{{- end -}}
