#!/bin/sh
# One piece of the compose stack's infrastructure, as its own (non-root) user, in the foreground:
#   lianxiao-infra rabbitmq | postgres | prometheus [extra arguments of the server]
# Started as that user (`--user rabbitmq|postgres|prometheus`, every capability dropped: the image's
# directories and new volumes already belong to it) or as root, which takes the volume over and drops
# to the user.
# Ports, the listening address (LISTEN_ADDRESS, default all) and credentials come from the environment,
# so a stack can also share a host network with other servers (as tests/containers does, on 127.0.0.1).
set -eu
address=${LISTEN_ADDRESS:-0.0.0.0}
role=${1:?usage: lianxiao-infra rabbitmq|postgres|prometheus}
shift

# Run (or `exec`) a command as the role's user; as that user already, run it as it is.
as_user() {
  user=$1
  shift
  if [ "$(id -u)" -eq 0 ]; then setpriv --reuid "$user" --regid "$user" --init-groups "$@"; else "$@"; fi
}
own() { if [ "$(id -u)" -eq 0 ]; then chown "$1:$1" "$2"; fi; }
as() {
  user=$1
  shift
  if [ "$(id -u)" -eq 0 ]; then exec setpriv --reuid "$user" --regid "$user" --init-groups "$@"; fi
  exec "$@"
}

case $role in
rabbitmq)
  # RabbitMQ 3.10 from Debian: the configuration file lives in the data volume (the root filesystem
  # stays as built); a node name and Erlang ports of its own, so it never meets a host's RabbitMQ.
  data=/var/lib/rabbitmq
  own rabbitmq "$data"
  cat >"$data/rabbitmq.conf" <<CONF
listeners.tcp.1 = $address:${RABBITMQ_NODE_PORT:-5672}
management.tcp.ip = $address
management.tcp.port = ${RABBITMQ_MANAGEMENT_PORT:-15672}
prometheus.tcp.ip = $address
prometheus.tcp.port = ${RABBITMQ_PROMETHEUS_PORT:-15692}
default_user = ${RABBITMQ_DEFAULT_USER:-lianxiao}
default_pass = ${RABBITMQ_DEFAULT_PASS:?set RABBITMQ_DEFAULT_PASS}
loopback_users = none
CONF
  own rabbitmq "$data/rabbitmq.conf"
  chmod 600 "$data/rabbitmq.conf"
  export HOME=$data RABBITMQ_CONFIG_FILE=$data/rabbitmq.conf RABBITMQ_MNESIA_BASE=$data/mnesia \
    RABBITMQ_LOG_BASE=$data/log RABBITMQ_LOGS=- RABBITMQ_NODENAME=${RABBITMQ_NODENAME:-rabbit@localhost} \
    ERL_EPMD_PORT=${ERL_EPMD_PORT:-4369} RABBITMQ_DIST_PORT=${RABBITMQ_DIST_PORT:-25672}
  if [ "$address" != 0.0.0.0 ]; then  # epmd and Erlang distribution on that address too
    export ERL_EPMD_ADDRESS=$address
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {$(echo "$address" | tr . ,)}"
  fi
  as rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server "$@"
  ;;
postgres)
  # PostgreSQL 15 from Debian: a cluster in the data volume on first start, password authentication
  # from anywhere the container's network lets in, one database per service.
  bin=/usr/lib/postgresql/15/bin
  data=${PGDATA:-/var/lib/postgresql/data}
  own postgres "$data"
  chmod 700 "$data"
  trap 'exit 143' TERM INT  # this shell is PID 1: without a trap it would ignore a stop during initdb
  if [ ! -s "$data/PG_VERSION" ]; then
    password_file=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}" >"$password_file"
    own postgres "$password_file"
    as_user postgres "$bin/initdb" -D "$data" \
      -U "${POSTGRES_USER:-lianxiao}" --pwfile="$password_file" --auth=scram-sha-256 -E UTF8 >/dev/null
    rm -f "$password_file"
    echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
    as_user postgres "$bin/postgres" --single -D "$data" postgres \
      </usr/local/share/lianxiao/postgres-init.sql >/dev/null
  fi
  # SIGTERM (what podman stop and Kubernetes send) is PostgreSQL's "smart" shutdown, which waits for every
  # client to leave; the services never do. It gets SIGINT instead: a fast shutdown, clients disconnected.
  (as postgres "$bin/postgres" -D "$data" \
    -c listen_addresses="$address" -p "${PGPORT:-5432}" -c unix_socket_directories=/tmp "$@") &
  server=$!
  trap 'kill -INT "$server"' TERM INT
  status=0
  wait "$server" || status=$?
  if [ "$status" -gt 128 ]; then  # the wait was interrupted by the signal: wait for the shutdown itself
    status=0
    wait "$server" || status=$?
  fi
  exit "$status"
  ;;
prometheus)
  own prometheus /prometheus
  as prometheus /usr/bin/prometheus --config.file=/etc/prometheus/prometheus.yml --storage.tsdb.path=/prometheus \
    --web.listen-address="$address:${PROMETHEUS_PORT:-9090}" "$@"
  ;;
*)
  echo "lianxiao-infra: unknown role $role (rabbitmq, postgres or prometheus)" >&2
  exit 64
  ;;
esac
