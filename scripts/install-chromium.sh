#!/usr/bin/env bash
# Installs Debian's Chromium (/usr/bin/chromium) for the headless browser check of the HTML
# run report (reports/report.slow.test.ts drives it with playwright-core; Playwright's own
# browser download does not work on these machines). Idempotent: does nothing when
# /usr/bin/chromium is already there. Needs root (apt-get); runs non-interactively.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
  exit 0
fi
if [[ "$(id -u)" -ne 0 ]]; then
  echo "install-chromium: Chromium is missing and installing it needs root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium
test -x /usr/bin/chromium
