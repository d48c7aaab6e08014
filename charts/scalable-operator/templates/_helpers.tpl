{{/* Chart name. */}}
{{- define "scalable.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name, plus the chart name unless the release name contains it. */}}
{{- define "scalable.fullname" -}}
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

{{- define "scalable.selectorLabels" -}}
app.kubernetes.io/name: {{ include "scalable.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "scalable.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "scalable.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: scalable
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "scalable.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "scalable.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "scalable.claimName" -}}
{{- default (printf "%s-telemetry" (include "scalable.fullname" .)) .Values.telemetry.persistence.existingClaim }}
{{- end }}

{{- define "scalable.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The permissions the operator uses on the objects it reconciles, each rule tied to the code path
that needs it (operator/scalable/controller/...). Rendered into a ClusterRole (every namespace)
or a Role per watched namespace. tests/integration/test_rbac_least_privilege.py runs the operator
under exactly these rules and checks, from the API server's audit log, that every verb is used.
*/}}
{{- define "scalable.workloadRules" -}}
# kopf lists and watches both custom resources and patches their metadata (finalizer
# scalable.dev/cleanup, progress annotations); kube.py reads them (get).
- apiGroups: ["scalable.dev"]
  resources: ["scalableworkflows", "advisormodels"]
  verbs: ["get", "list", "watch", "patch"]
# workflow.py / advisor_model.py write status (merge patch on the status subresource).
- apiGroups: ["scalable.dev"]
  resources: ["scalableworkflows/status", "advisormodels/status"]
  verbs: ["patch"]
# scaling_loop.py reads replicas and patches spec.worker.replicas; sizing.py JSON-patches the
# worker pod template and the scalable.dev/sized annotation.
- apiGroups: ["kubernetes.dask.org"]
  resources: ["daskclusters", "daskworkergroups"]
  verbs: ["get", "patch"]
# scaling_loop.py refuses to act when a DaskAutoscaler targets the same cluster.
- apiGroups: ["kubernetes.dask.org"]
  resources: ["daskautoscalers"]
  verbs: ["list"]
# worker_pods.py lists the worker pods of each workflow's DaskCluster (by dask-kubernetes'
# labels) to report those the scheduler or the kubelet refused (condition WorkersScheduled).
# Read only, and list only: it never reads a pod by name.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# kube.py event(): what was resized or scaled and why.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Cluster-scoped reviews, needed in every mode: ingest.py authenticates callers of the
ingestion endpoint (TokenReview) and asks whether they may update the ScalableWorkflow (SAR). */}}
{{- define "scalable.reviewRules" -}}
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
{{- end }}
