#!/usr/bin/env bash
# The Compose dev stack behind `make docker-dev` and `make docker-down`.
#   scripts/compose.sh up     build the images and start router + Redis (+ PROFILES, e.g. "agent"),
#                             then wait for the router's /healthz on 127.0.0.1:${IIR_PORT:-8000}
#   scripts/compose.sh down   remove every container, network and volume the stack made (all profiles)
# Needs a Docker engine. Without one it says so and exits 1 (nothing started, nothing removed).
set -euo pipefail
cd "$(dirname "$0")/.."
action="${1:-}"
FILE=docker-compose.yml
ALL_PROFILES=(--profile agent --profile gpu)

case "$action" in up|down) ;; *) echo "usage: scripts/compose.sh up|down" >&2; exit 2 ;; esac
target="make docker-$([[ $action == up ]] && echo dev || echo down)"

# A Compose implementation: the Docker CLI plugin (v2) or docker-compose (v1).
if command -v docker >/dev/null && docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null; then
  compose=(docker-compose)
else
  echo "$target: no Compose found (neither \`docker compose\` nor \`docker-compose\`)." >&2
  echo "  Install Docker Engine with the compose plugin: https://docs.docker.com/engine/install/" >&2
  exit 1
fi

# An engine: `docker info` when the CLI exists, else ask Compose itself (v1 talks to the API directly).
if command -v docker >/dev/null; then
  probe=(docker info)
else
  probe=("${compose[@]}" -f "$FILE" "${ALL_PROFILES[@]}" ps -q)
fi
if ! err="$("${probe[@]}" 2>&1 >/dev/null)"; then
  echo "$target: no Docker engine is reachable on this machine (${DOCKER_HOST:-unix:///var/run/docker.sock})." >&2
  echo "  ${probe[*]}: $(printf '%s' "$err" | tail -n 1)" >&2
  echo "  Nothing was $([[ $action == up ]] && echo started || echo removed). Start Docker (or set DOCKER_HOST) and run $target again." >&2
  exit 1
fi

if [[ $action == down ]]; then
  "${compose[@]}" -f "$FILE" "${ALL_PROFILES[@]}" down --volumes --remove-orphans
  echo "$target: removed the stack's containers, networks and volumes"
  exit 0
fi

profiles=()
for p in ${PROFILES:-}; do profiles+=(--profile "$p"); done
[[ -f .env ]] || echo "note: no .env; using the defaults in docker-compose.yml (create one with: iir export compose-env --spec docker/iir.compose.yaml -o .env)"
"${compose[@]}" -f "$FILE" "${profiles[@]}" up -d --build
url="http://127.0.0.1:${IIR_PORT:-8000}"
for _ in $(seq 1 60); do
  if python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/healthz', timeout=2)" "$url" 2>/dev/null; then
    echo "$target: router ready at $url (OpenAI base URL $url/v1); stop with: make docker-down"
    exit 0
  fi
  sleep 2
done
echo "$target: the router did not answer $url/healthz within 120 s; its logs:" >&2
"${compose[@]}" -f "$FILE" logs --tail 50 router >&2 || true
exit 1
