#!/usr/bin/env bash
# Installs etcd (Debian's etcd-server: /usr/bin/etcd) when missing, for the broker's slow
# suite, which starts its own etcd on loopback. Idempotent: does nothing when /usr/bin/etcd is
# already there. Needs root (apt-get); runs non-interactively.
set -euo pipefail

ETCD=/usr/bin/etcd
if [[ -x "$ETCD" ]]; then
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-etcd: etcd is missing and installing it needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# The package's unit would start a default etcd where systemd runs; policy-rc.d forbids it
# (exit 101), so nothing is left running and the tests' own etcd owns its ports.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$policy" ]]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  created_policy=1
fi
remove_policy() { if [[ "$created_policy" == 1 ]]; then rm -f "$policy"; fi; }
trap remove_policy EXIT
apt-get install -y --no-install-recommends etcd-server
test -x "$ETCD"
