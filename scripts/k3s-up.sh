#!/usr/bin/env bash
# `make k3s-up`: a single-node k3s cluster with both charts installed.
#   1. a cluster: the one $KUBECONFIG (or /etc/rancher/k3s/k3s.yaml) reaches, else k3s is
#      installed with its official script (needs Linux, root and systemd or openrc as init);
#   2. helm/llm-d as release `llm-d` in namespace llm-d (values: `iir export helm-values
#      --chart llm-d` when the spec has an llm-d backend, else the chart defaults);
#   3. helm/iir-router as release `iir-router` in namespace iir, values from `iir export helm-values`,
#      LLMD_ENDPOINT pointing at the llm-d Service. The router image (iir-router:<appVersion>, or
#      $IIR_ROUTER_IMAGE) is built and imported into k3s when a Docker engine is available.
# Where k3s cannot be installed it says why and exits 1; nothing is changed.
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC="${SPEC:-iir.yaml}"
VENV="${VENV:-.venv}"
K3S_VERSION="${K3S_VERSION:-v1.31.4+k3s1}"
HELM="${HELM:-$PWD/.cache/tools/bin/helm}"
KUBECTL="${KUBECTL:-$PWD/.cache/tools/bin/kubectl}"
LLMD_NS=llm-d
IIR_NS=iir
say() { printf '%s\n' "$*" >&2; }  # progress on stderr: with DRY_RUN=1, stdout is only the manifests
die() { printf 'make k3s-up: %s\n' "$*" >&2; exit 1; }
# DRY_RUN=1: no cluster; each chart is rendered by `helm template` with the exact
# values and flags a real run uses (this is what the tests exercise on a machine without k3s).
DRY_RUN="${DRY_RUN:-0}"

[[ -x "$HELM" && -x "$KUBECTL" ]] || die "helm/kubectl missing: run make deploy-tools first"
reachable() { "$KUBECTL" --request-timeout=5s get nodes >/dev/null 2>&1; }

if [[ -z "${KUBECONFIG:-}" && -r /etc/rancher/k3s/k3s.yaml ]]; then export KUBECONFIG=/etc/rancher/k3s/k3s.yaml; fi
if [[ $DRY_RUN == 1 ]]; then
  say "==> DRY_RUN=1: no cluster is touched; the charts are rendered client-side"
elif [[ -n "${KUBECONFIG:-}" ]] && reachable; then
  say "==> using the cluster at KUBECONFIG=$KUBECONFIG"
else
  # Can k3s be installed here? Say exactly why not, before touching anything.
  [[ "$(uname -s)" == Linux ]] || die "k3s runs on Linux only (this is $(uname -s)); nothing was installed." \
    "Point KUBECONFIG at an existing cluster and run make k3s-up again."
  [[ "$(id -u)" == 0 ]] || die "installing k3s needs root (run: sudo make k3s-up); nothing was installed."
  if [[ -d /run/systemd/system ]]; then :
  elif command -v openrc >/dev/null && [[ -d /run/openrc ]]; then :
  else
    die "k3s cannot be installed on this machine: PID 1 is '$(cat /proc/1/comm 2>/dev/null || echo unknown)', not systemd or openrc" \
      "(a container or CI sandbox); nothing was installed. Use a Linux host or VM booted with systemd," \
      "or set KUBECONFIG to an existing cluster and run make k3s-up again."
  fi
  command -v curl >/dev/null || die "curl is required to fetch the k3s install script (apt-get install curl)"
  say "==> installing k3s $K3S_VERSION (https://get.k3s.io)"
  curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION="$K3S_VERSION" sh -
  export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
  for _ in $(seq 1 60); do reachable && break; sleep 5; done
  "$KUBECTL" wait --for=condition=Ready nodes --all --timeout=300s
fi

work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
iir() { "$VENV/bin/iir" "$@"; }
install_chart() {  # release chart namespace [helm args...]
  local release="$1" chart="$2" ns="$3"; shift 3
  if [[ $DRY_RUN == 1 ]]; then
    "$HELM" template "$release" "$chart" --namespace "$ns" "$@"
  else
    "$HELM" upgrade --install "$release" "$chart" --namespace "$ns" --create-namespace "$@"
  fi
}

say "==> llm-d chart (release llm-d, namespace $LLMD_NS)"
llmd_values=()
if iir export helm-values --chart llm-d --spec "$SPEC" -o "$work/llm-d.yaml" 2>/dev/null; then
  llmd_values=(-f "$work/llm-d.yaml")
else
  say "   ($SPEC has no llm-d backend: chart defaults)"
fi
install_chart llm-d helm/llm-d "$LLMD_NS" "${llmd_values[@]}"
if [[ $DRY_RUN != 1 ]] && ! "$KUBECTL" get nodes -o jsonpath='{.items[*].status.allocatable}' | grep -q 'nvidia.com/gpu'; then
  say "   note: no node advertises nvidia.com/gpu; the llm-d pods stay Pending until a GPU node (with the NVIDIA device plugin) joins"
fi

say "==> iir-router chart (release iir-router, namespace $IIR_NS)"
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/iir-router/Chart.yaml)"
image="${IIR_ROUTER_IMAGE:-iir-router:$app_version}"
if [[ -z "${IIR_ROUTER_IMAGE:-}" && $DRY_RUN != 1 ]]; then
  if command -v docker >/dev/null && docker info >/dev/null 2>&1 && command -v k3s >/dev/null; then
    docker build -f docker/router.Dockerfile -t "$image" .
    docker save "$image" | k3s ctr images import -
  else
    say "   note: no Docker engine to build $image; the router pods start once the image is in the cluster" \
      "(build docker/router.Dockerfile and import it, or set IIR_ROUTER_IMAGE=registry/iir-router:tag)"
  fi
fi
iir export helm-values --spec "$SPEC" -o "$work/iir-router.yaml"
install_chart iir-router helm/iir-router "$IIR_NS" -f "$work/iir-router.yaml" \
  --set image.repository="${image%:*}" --set image.tag="${image##*:}" \
  --set-string env.LLMD_ENDPOINT="http://llm-d.$LLMD_NS.svc.cluster.local:8000"
if [[ $DRY_RUN == 1 ]]; then say "make k3s-up: DRY_RUN=1: both charts rendered; nothing was installed"; exit 0; fi
say "make k3s-up: done. kubectl -n $IIR_NS port-forward svc/iir-router 8000:8000  # then http://127.0.0.1:8000/v1"
