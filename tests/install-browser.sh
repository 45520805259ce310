#!/bin/sh
# Install the headless browser the dashboard test drives (tests/daemon/test_dashboard_browser.py):
# Debian's chromium and chromium-driver. Does nothing when both are already on PATH.
# Runs apt-get directly as root, through sudo otherwise.
set -eu

have() { command -v "$1" >/dev/null 2>&1; }

if [ "${AHGD_SKIP_BROWSER_TESTS:-}" = "1" ]; then
    echo "AHGD_SKIP_BROWSER_TESTS=1: not installing chromium; the browser test will be skipped"
    exit 0
fi

if have chromium && have chromedriver; then
    echo "chromium and chromedriver already installed: $(command -v chromium), $(command -v chromedriver); nothing to do"
    exit 0
fi

if ! have apt-get; then
    echo "no apt-get here; install Chromium and its matching chromedriver with your package manager," >&2
    echo "or set AHGD_SKIP_BROWSER_TESTS=1 to skip the browser tests" >&2
    exit 1
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=""
elif have sudo; then
    as_root="sudo"
else
    echo "not root and no sudo: run this script as root to install chromium chromium-driver" >&2
    exit 1
fi

echo "installing chromium chromium-driver with ${as_root:+$as_root }apt-get"
$as_root apt-get update -q
$as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
echo "installed: $(command -v chromium), $(command -v chromedriver)"
