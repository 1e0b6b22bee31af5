#!/usr/bin/env bash
# Debian's chromium, in which the report's HTML test renders the page through playwright (never
# `playwright install`, which downloads a browser). Installing it needs root or passwordless sudo;
# without either this says so and goes on: the test then skips (and fails where CI is set).
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    as_root() { "$@"; }
elif sudo -n true 2>/dev/null; then
    as_root() { sudo "$@"; }
else
    echo "install-chromium: no root or passwordless sudo to apt-get install chromium;" \
        "the report's browser test will skip" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "install-chromium: no apt-get to install chromium; the report's browser test will skip" >&2
    exit 0
fi
echo "install-chromium: apt-get install chromium" >&2
as_root apt-get update -qq
as_root apt-get install -y -qq chromium >/dev/null
