#!/usr/bin/env bash
# Make sure the local RabbitMQ (with its management and Prometheus plugins) and PostgreSQL answer.
# Used by `make test`; `make run` does its own, gentler check (it only needs RabbitMQ).
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() {
  local port=$1 what=$2
  for _ in $(seq 1 60); do port_open "$port" && return 0; sleep 1; done
  echo "error: $what did not start listening on 127.0.0.1:$port within 60 s" >&2
  exit 1
}

if ! port_open 5672; then
  if command -v rabbitmq-server >/dev/null; then
    echo "RabbitMQ is not answering on 127.0.0.1:5672; starting it (rabbitmq-server -detached)"
    rabbitmq-server -detached
    wait_for_port 5672 RabbitMQ
  else
    echo "error: no RabbitMQ on 127.0.0.1:5672 and rabbitmq-server is not installed: apt-get install rabbitmq-server" >&2
    exit 1
  fi
fi
# The test fixtures create a vhost per test through the management API (:15672).
if ! port_open 15672; then
  rabbitmq-plugins enable rabbitmq_management rabbitmq_prometheus >/dev/null
  wait_for_port 15672 "RabbitMQ management"
fi

if ! port_open 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    echo "PostgreSQL is not answering on 127.0.0.1:5432; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
    wait_for_port 5432 PostgreSQL
  else
    echo "error: no PostgreSQL on 127.0.0.1:5432 and pg_ctlcluster is not installed: apt-get install postgresql" >&2
    exit 1
  fi
fi
