#!/usr/bin/env bash
# `make test-containers`: the base image (debootstrap, no registry), the application, infrastructure and
# nginx images, then tests/containers runs the whole platform from them under podman on 127.0.0.1 and removes
# it. Prints the figures (build times, image sizes, start to /readyz). Bounded by `make` (timeout).
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=${LIANXIAO_BASE_IMAGE:-localhost/lianxiao-base:bookworm}
APP_IMAGE=${LIANXIAO_IMAGE:-localhost/lianxiao:local}
INFRA_IMAGE=${LIANXIAO_INFRA_IMAGE:-localhost/lianxiao-infra:local}
NGINX_IMAGE=${LIANXIAO_NGINX_IMAGE:-localhost/lianxiao-nginx:local}
INGEST_IMAGE=${LIANXIAO_INGEST_IMAGE:-localhost/lianxiao-ingest:local}
RUN_ID=${LIANXIAO_CONTAINERS_RUN:-$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export LIANXIAO_IMAGE=$APP_IMAGE LIANXIAO_INFRA_IMAGE=$INFRA_IMAGE LIANXIAO_NGINX_IMAGE=$NGINX_IMAGE \
  LIANXIAO_INGEST_IMAGE=$INGEST_IMAGE LIANXIAO_CONTAINERS_RUN=$RUN_ID
figures=$(mktemp)

# Whatever happens (a failure, the time limit), this run's containers and volumes go.
cleanup() {
  local names volumes
  names=$(podman ps -a --filter "label=lianxiao.test-run=$RUN_ID" --format '{{.Names}}' 2>/dev/null || true)
  [[ -z $names ]] || podman rm --force --time=5 $names >/dev/null 2>&1 || true
  volumes=$(podman volume ls --filter "label=lianxiao.test-run=$RUN_ID" --format '{{.Name}}' 2>/dev/null || true)
  [[ -z $volumes ]] || podman volume rm --force $volumes >/dev/null 2>&1 || true
  echo; echo "== test-containers figures"; cat "$figures"; rm -f "$figures"
}
trap cleanup EXIT

step() {
  local what=$1 started=$SECONDS
  shift
  "$@"
  echo "$what: $((SECONDS - started)) s" >>"$figures"
}
size() { podman image inspect --format '{{.Size}}' "$1" | awk -v name="$1" '{printf "%s: %.0f MB\n", name, $1 / 1e6}'; }

# Images this run replaces (the same tags, built before) are removed once the new ones exist.
superseded=$(podman image inspect --format '{{.Id}}' "$APP_IMAGE" "$INFRA_IMAGE" "$NGINX_IMAGE" "$INGEST_IMAGE" "$BASE_IMAGE" \
  2>/dev/null || true)
# LIANXIAO_REUSE_BASE=1 keeps an existing base image (quicker reruns); CI builds it every time.
if [[ ${LIANXIAO_REUSE_BASE:-0} == 1 ]] && podman image exists "$BASE_IMAGE"; then
  echo "base image: reused $BASE_IMAGE" >>"$figures"
else
  step "base image (debootstrap)" env BASE_IMAGE="$BASE_IMAGE" deploy/containers/build-base-image.sh
fi
# The images only share the base: built side by side (one mostly downloads while another unpacks).
build() { podman build --quiet --build-arg BASE_IMAGE="$BASE_IMAGE" -f "$1" -t "$2" . >/dev/null; }
started=$SECONDS
build deploy/Dockerfile "$APP_IMAGE" & app_build=$!
build deploy/infra/Containerfile "$INFRA_IMAGE" & infra_build=$!
build deploy/nginx/Dockerfile "$NGINX_IMAGE" & nginx_build=$!
for pid in $app_build $infra_build $nginx_build; do
  wait "$pid" || { echo "error: an image did not build (podman build above)" >&2; exit 1; }
done
echo "application, infrastructure and nginx images, built side by side: $((SECONDS - started)) s" >>"$figures"
# The relay ingest's image is the application image plus nginx-rtmp and ffmpeg (deploy/ingest/Dockerfile).
step "ingest image" podman build --quiet --build-arg APP_IMAGE="$APP_IMAGE" -f deploy/ingest/Dockerfile \
  -t "$INGEST_IMAGE" . >/dev/null
for image in "$BASE_IMAGE" "$APP_IMAGE" "$INFRA_IMAGE" "$NGINX_IMAGE" "$INGEST_IMAGE"; do size "$image" >>"$figures"; done
# The application build stage's intermediate images first (they stand on a base), then the superseded
# images, children before the base.
stages=$(podman images --quiet --filter label=io.lianxiao.build-stage --filter dangling=true)
[[ -z $stages ]] || podman rmi $stages >/dev/null 2>&1 || true
current=$(podman image inspect --format '{{.Id}}' "$APP_IMAGE" "$INFRA_IMAGE" "$NGINX_IMAGE" "$INGEST_IMAGE" "$BASE_IMAGE")
for id in $superseded; do
  grep -qx "$id" <<<"$current" || podman rmi "$id" >/dev/null 2>&1 || true
done

.venv/bin/pytest -q -s -p no:cacheprovider -m containers tests/containers | tee >(grep '^containers:' >>"$figures")
