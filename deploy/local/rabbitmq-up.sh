#!/usr/bin/env bash
# Starts the system RabbitMQ if it is not running and waits until it accepts AMQP on
# 127.0.0.1:5672. Used by .ci/run and by anyone running fleetmap without Docker.
set -euo pipefail

amqp_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if amqp_open; then
  echo "RabbitMQ is accepting connections on 127.0.0.1:5672"
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "rabbitmq-server is not installed: apt-get install rabbitmq-server" >&2
  exit 1
fi
echo "starting RabbitMQ (rabbitmq-server -detached)"
rabbitmq-server -detached || true
for _ in $(seq 1 120); do
  if amqp_open; then
    rabbitmqctl -q await_startup >/dev/null 2>&1 || true
    echo "RabbitMQ is up"
    exit 0
  fi
  sleep 1
done
echo "RabbitMQ did not start within 120 s; see /var/log/rabbitmq/" >&2
exit 1
