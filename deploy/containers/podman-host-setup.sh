#!/usr/bin/env bash
# What podman needs on a Debian 12 machine like CI's before lianxiao's containers run (idempotent):
# - the packages: podman (4.3), podman-compose, buildah, debootstrap, runc;
# - /etc/containers/containers.conf.d/lianxiao.conf: runtime runc (Debian's default crun refuses this
#   machine class's hybrid cgroups) and default_ulimits (without CAP_SYS_RESOURCE podman cannot raise
#   nofile/nproc above what it was given, and RabbitMQ and PostgreSQL want many files).
# It says what it changes; nothing is changed when everything is already in place.
set -euo pipefail

packages=(podman podman-compose buildah debootstrap runc)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "containers-host: installing ${missing[*]} (Debian packages)"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
fi

conf=/etc/containers/containers.conf.d/lianxiao.conf
# nofile no higher than this machine's hard limit (20000 on CI's machine class).
hard_nofile=$(ulimit -Hn); [[ $hard_nofile == unlimited || $hard_nofile -gt 65536 ]] && hard_nofile=65536
wanted="# Written by lianxiao deploy/containers/podman-host-setup.sh (make containers-host).
[containers]
default_ulimits = [\"nofile=$hard_nofile:$hard_nofile\", \"nproc=32768:32768\"]

[engine]
runtime = \"runc\""
if [[ ! -f $conf || $(cat "$conf") != "$wanted" ]]; then
  echo "containers-host: writing $conf (runtime = runc, default_ulimits nofile/nproc)"
  mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$wanted" >"$conf"
fi
podman info --format '{{.Host.OCIRuntime.Name}}' | grep -qx runc || {
  echo "error: podman does not use runc after writing $conf" >&2; exit 1; }
