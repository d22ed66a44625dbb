#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine with Node 20+: npm packages
# (exact versions from package-lock.json), the build, and the Debian packages the slow suites
# use (PostgreSQL 15 for pg_waldump and a real WAL source; etcd for the broker; Chromium for the HTML report check).
# Idempotent. SK_SKIP_OS_PACKAGES=1 skips the Debian packages.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v node >/dev/null 2>&1; then
  echo "setup: Node.js 20 or newer is required" >&2
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" -lt 20 ]; then
  echo "setup: Node.js 20 or newer is required (found $(node --version))" >&2
  exit 1
fi
npm ci --no-audit --no-fund
npm run build
if [ "${SK_SKIP_OS_PACKAGES:-0}" != "1" ] && [ -x scripts/install-postgres.sh ]; then
  scripts/install-postgres.sh
fi
if [ "${SK_SKIP_OS_PACKAGES:-0}" != "1" ] && [ -x scripts/install-etcd.sh ]; then
  scripts/install-etcd.sh
fi
if [ "${SK_SKIP_OS_PACKAGES:-0}" != "1" ] && [ -x scripts/install-chromium.sh ]; then
  scripts/install-chromium.sh
fi
