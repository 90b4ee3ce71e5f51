#!/bin/sh
# The nginx container's start: writes the per-deployment values media.conf needs (PLAYBACK_SECRET, the same
# secret the resources service signs with; RECORDINGS_ROOT, where the recordings volume is mounted) into
# /tmp, which nginx.conf includes, then runs nginx. Without PLAYBACK_SECRET every /media/ URL is refused.
set -eu
secret="${PLAYBACK_SECRET:-}"
root="${RECORDINGS_ROOT:-/var/lib/lianxiao/recordings}"
case "$secret" in *[!A-Za-z0-9._~+/=-]*)
    echo "PLAYBACK_SECRET may hold only letters, digits and ._~+/=-" >&2; exit 64 ;; esac
case "$root" in /*) ;; *) echo "RECORDINGS_ROOT must be an absolute path" >&2; exit 64 ;; esac
case "$root" in *[!A-Za-z0-9._/-]*) echo "RECORDINGS_ROOT may hold only letters, digits and ._/-" >&2; exit 64 ;; esac
if [ -z "$secret" ]; then
    echo "PLAYBACK_SECRET is not set: every /media/ URL will be refused" >&2
    secret="unset-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
fi
umask 077
printf 'set $playback_secret "%s";\nset $recordings_root "%s";\n' "$secret" "$root" >/tmp/lianxiao-media.conf
exec nginx -g 'daemon off;'
