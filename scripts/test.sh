#!/usr/bin/env bash
# The test command (README, .ci/run): install what the suite needs, then run it.
# Python packages come from PyPI; the browser test drives Debian's chromium with Playwright
# (never a downloaded browser), installed here when missing and we may use apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed; the browser test will be skipped" >&2
  fi
fi
# The standard `age` CLI proves encrypted backups open without prefectstack (else skipped).
if ! command -v age >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1
then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age; } \
    >/dev/null || echo "note: the age CLI could not be installed; its test is skipped" >&2
fi
# -c requirements.lock: exactly the tested versions (README, "The dependency lock")
python -m pip install -q -c requirements.lock -e ".[test]"
# Two test processes, each taking whole modules (a module keeps its one stack): integration
# tests mostly wait on real services, so two stacks side by side fit on two cores.
# Longest modules first (tests/conftest.py), not xdist's order by number of tests.
# --durations: the slowest tests and fixtures, where the suite's time goes.
exec python -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=30 "$@"
