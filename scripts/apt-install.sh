#!/usr/bin/env bash
# Installs Debian packages for the test scripts (scripts/test.sh, scripts/test-browser.sh):
# `bash scripts/apt-install.sh PACKAGE...`; nothing to do without arguments. Through sudo
# when not root. policy-rc.d exit 101: no package's postinst may start its service (a system
# redis on 6379; README.md promises the scripts never start the packages' services). It is
# only added when the machine has none, and removed afterwards.
set -euo pipefail
[ $# -gt 0 ] || exit 0
echo "installing: $*"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod 755 "$policy"
  added_policy=1
fi
rc=0
$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
  "$@" >/dev/null || rc=$?
[ "$added_policy" -eq 0 ] || $SUDO rm -f "$policy"
[ "$rc" -eq 0 ] || { echo "apt-get install $* failed" >&2; exit 1; }
