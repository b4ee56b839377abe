#!/usr/bin/env bash
# End-to-end run of lmaas on a real Kubernetes (kind): build the four images, load them
# into a kind cluster, helm install the chart, apply custom resources, wait for their
# statuses, and send a chat completion through the gateway with the tenant's API key.
#
# NOT RUN IN CI: it needs a Docker engine, kind, kubectl and helm, and the CI machines
# have no Docker (tests/operator and tests/chart run the same flow against an API
# stand-in instead). It has not been run by its author for the same reason: expect to
# adjust it the first time it runs on a machine with Docker.
#
# Usage: infra/kind/e2e.sh [--keep]   (--keep leaves the cluster up for inspection)
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER=lmaas-e2e
TAG=e2e
NS=lmaas-system
KEEP=${1:-}
HELM=${HELM:-$(command -v helm || echo node_modules/.bin/helm)}

for tool in docker kind kubectl "$HELM"; do
  command -v "$tool" >/dev/null || { echo "missing $tool: install it first" >&2; exit 1; }
done

cleanup() { [[ "$KEEP" == "--keep" ]] || kind delete cluster --name "$CLUSTER"; }
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }

step "building images (CPU torch)"
for image in gateway runtime worker operator; do
  docker build -f "services/$image/Dockerfile" -t "lmaas/$image:$TAG" .
done

step "creating the kind cluster and loading the images"
kind create cluster --config infra/kind/cluster.yaml --wait 120s
for image in gateway runtime worker operator; do
  kind load docker-image --name "$CLUSTER" "lmaas/$image:$TAG"
done

step "installing the chart"
kubectl create namespace "$NS"
"$HELM" install lmaas charts/lmaas -n "$NS" --wait --timeout 10m \
  --set images.gateway.repository=lmaas/gateway --set images.gateway.tag=$TAG \
  --set images.worker.repository=lmaas/worker --set images.worker.tag=$TAG \
  --set images.operator.repository=lmaas/operator --set images.operator.tag=$TAG \
  --set images.runtime.repository=lmaas/runtime --set images.runtime.tag=$TAG \
  --set gateway.replicas=1 \
  --set worker.resources.requests.memory=1Gi

step "applying custom resources (a CPU 'GPU type', the default model, a tenant, a service)"
MODEL_PATH=$(docker run --rm --entrypoint python "lmaas/runtime:$TAG" \
  -c "from lmaas.config import default_model_path; print(default_model_path())")
kubectl apply -f - <<YAML
apiVersion: lmaas.io/v1alpha1
kind: GPUType
metadata: {name: cpu}
spec:
  memoryGib: 8
  pricePerHour: 0.05
  bf16Tflops: 1
  memBandwidthGbps: 20
  resourceName: ""
  nodeSelector: {lmaas.io/e2e-node: "true"}
---
apiVersion: lmaas.io/v1alpha1
kind: Model
metadata: {name: smollm2-135m}
spec:
  source: $MODEL_PATH
  numParams: 134515008
  numLayers: 30
  hiddenSize: 576
  numKvHeads: 3
  headDim: 64
---
apiVersion: lmaas.io/v1alpha1
kind: Tenant
metadata: {name: e2e}
spec: {quotas: {gpus: 0, cpu: "8", memory: 16Gi}}
YAML
kubectl wait --for=condition=Ready tenant/e2e --timeout=120s
kubectl apply -f - <<YAML
apiVersion: lmaas.io/v1alpha1
kind: ModelService
metadata: {name: chat, namespace: tenant-e2e}
spec:
  model: smollm2-135m
  slo: {targetMs: 500}
  scaling: {minReplicas: 1}
  gpu: {mode: explicit, counts: {cpu: 1}}
  runtime: {cpu: "1", memory: 2Gi}
YAML
kubectl -n tenant-e2e wait --for=condition=Ready modelservice/chat --timeout=120s
kubectl -n tenant-e2e rollout status deployment/chat-cpu --timeout=15m
kubectl -n tenant-e2e get modelservice chat -o wide

step "sending a request through the gateway with the tenant's key"
KEY=$(kubectl -n tenant-e2e get secret lmaas-api-key -o jsonpath='{.data.api-key}' | base64 -d)
kubectl -n "$NS" port-forward svc/lmaas-gateway 18080:80 >/dev/null &
PF=$!
trap 'kill $PF 2>/dev/null; cleanup' EXIT
sleep 3
curl -fsS http://127.0.0.1:18080/v1/chat/completions \
  -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
  -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 16}'
echo
step "end-to-end run passed"
