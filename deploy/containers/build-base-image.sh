#!/usr/bin/env bash
# Build the base image of every lianxiao image without any container registry: a minimal Debian root
# filesystem from the Debian mirror this machine's apt already uses (debootstrap), Python from Debian,
# and this machine's CA certificates (so pip and apt inside image builds trust the same proxies and
# mirrors the host does). Imported into podman as $BASE_IMAGE (default localhost/lianxiao-base:bookworm).
#
#   deploy/containers/build-base-image.sh            # build (replaces an existing image of that name)
#   DEBIAN_MIRROR=http://mirror.example.org/debian deploy/containers/build-base-image.sh
#
# Needs root (debootstrap), debootstrap and podman; `make containers-host` installs them.
set -euo pipefail

BASE_IMAGE=${BASE_IMAGE:-localhost/lianxiao-base:bookworm}
SUITE=${DEBIAN_SUITE:-$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")}

# The first Debian mirror of the host's apt sources (deb822 or one-line format) unless given.
host_mirror() {
  local uri
  uri=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [[ -n $uri ]] || uri=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
  echo "${uri:-http://deb.debian.org/debian}"
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-${MIRROR%/debian*}/debian-security}

for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || { echo "error: $tool is not installed (make containers-host installs it)" >&2; exit 1; }
done
[[ $(id -u) -eq 0 ]] || { echo "error: debootstrap needs root" >&2; exit 1; }

rootfs=$(mktemp -d /var/tmp/lianxiao-base.XXXXXX)
trap 'rm -rf --one-file-system "$rootfs"' EXIT
started=$SECONDS

echo "debootstrap $SUITE from $MIRROR into $rootfs"
debootstrap --variant=minbase --include=ca-certificates,python3,python3-venv \
  "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 || { tail -30 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"

# apt inside images uses the same mirror, with the suite's updates and security fixes.
cat >"$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
SOURCES
# The host's proxy settings for apt, if it has any (a proxied data centre).
grep -rhsi '^Acquire::.*Proxy' /etc/apt/apt.conf /etc/apt/apt.conf.d/ >"$rootfs/etc/apt/apt.conf.d/90host-proxy" || \
  rm -f "$rootfs/etc/apt/apt.conf.d/90host-proxy"

# The host's own CA certificates (a proxy's or a data centre's CA) join Debian's bundle.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
chroot "$rootfs" update-ca-certificates >/dev/null 2>&1  # its rehash warns about the bundle itself

# `python` as in the official image, so the Dockerfile works on either base.
ln -sf /usr/bin/python3 "$rootfs/usr/local/bin/python"
# What an image does not need at run time.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/*
find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true

# pip uses its own CA bundle unless told otherwise; requests (REQUESTS_CA_BUNDLE) likewise.
tar -C "$rootfs" --numeric-owner -c . | podman import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
  --change 'ENV REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt' \
  --change 'CMD ["python3"]' \
  --message "debootstrap $SUITE from $MIRROR, Python from Debian, host CA certificates" \
  - "$BASE_IMAGE" >/dev/null
echo "built $BASE_IMAGE in $((SECONDS - started)) s ($(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | \
  awk '{printf "%.0f MB", $1 / 1e6}'))"
