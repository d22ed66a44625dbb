#!/usr/bin/env bash
# Installs PostgreSQL 15 (server and client tools: initdb, postgres, psql, pg_waldump,
# pg_receivewal, pgbench) from Debian's packages when missing. Idempotent: does nothing when
# pg_waldump is already there. Needs root (apt-get); runs non-interactively.
set -euo pipefail

PG_BIN=/usr/lib/postgresql/15/bin
if [[ -x "$PG_BIN/pg_waldump" && -x "$PG_BIN/postgres" && -x "$PG_BIN/initdb" ]]; then
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-postgres: PostgreSQL 15 is missing and installing it needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
# The Debian package creates a default cluster; we only need the binaries, so its creation
# is skipped (create_main_cluster=false) and nothing is left running.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/sk-no-main-cluster.conf
apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15
test -x "$PG_BIN/pg_waldump"
