#!/usr/bin/env bash
# Start NATS (with JetStream) on 127.0.0.1:4222 and RabbitMQ on 127.0.0.1:5672 if they are down, installing the
# Debian packages when missing. Used by .ci/run; safe to run again (does nothing when both answer).
set -uo pipefail

up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { for _ in $(seq 1 60); do up "$1" && return 0; sleep 1; done; return 1; }
apt_ready=0
need() {
  command -v "$1" >/dev/null && return 0
  if [ "$apt_ready" = 0 ]; then apt-get update -qq >/dev/null 2>&1 || true; apt_ready=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null 2>&1
}

status=0
if ! up 4222; then
  if need nats-server nats-server; then
    mkdir -p /tmp/granary-nats
    nohup nats-server -a 127.0.0.1 -p 4222 -js -sd /tmp/granary-nats >/tmp/granary-nats.log 2>&1 &
    wait_port 4222 || { echo "nats-server did not start (see /tmp/granary-nats.log)"; status=1; }
  else
    echo "nats-server is not installed and could not be installed"; status=1
  fi
fi
if ! up 5672; then
  if need rabbitmq-server rabbitmq-server; then
    (rabbitmq-server -detached || nohup rabbitmq-server >/tmp/granary-rabbitmq.log 2>&1 &) >/dev/null 2>&1
    wait_port 5672 || { echo "rabbitmq-server did not start"; status=1; }
  else
    echo "rabbitmq-server is not installed and could not be installed"; status=1
  fi
fi
exit $status
