#!/usr/bin/env bash
# Debian tools some tests use besides the venv: docker-compose (validates docker-compose.yml
# without a Docker engine). Installed only when missing and when running as root; otherwise the
# test that needs it says so.
set -u
command -v docker-compose >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose) >/dev/null 2>&1 \
    || echo "note: could not install docker-compose; the compose file is then checked by parsing only" >&2
fi
exit 0
