#!/usr/bin/env bash
# Installs what the dev stack and the tests need, once: a Python venv with cmsaf-hub (editable) and its
# test extras, and the Node.js packages of devstack/ from their lockfile. Safe to run again: it only
# redoes a step whose inputs changed.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf 'cmsaf-hub setup: %s\n' "$*" >&2; }

command -v python3 >/dev/null || { say "python3 not found: install Python 3.10+ (Debian: apt-get install python3 python3-venv)"; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || { say "node/npm not found: install Node.js 20+ (Debian: apt-get install nodejs npm)"; exit 1; }

if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  python3 -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ pyproject.toml -nt .venv/.installed ]; then
  say "installing cmsaf-hub and its test dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch .venv/.installed
fi
if [ ! -f devstack/node_modules/.installed ] || [ devstack/package-lock.json -nt devstack/node_modules/.installed ]; then
  say "installing the dev stack's Node.js packages (npm ci)"
  npm ci --prefix devstack --no-audit --no-fund --loglevel=error
  touch devstack/node_modules/.installed
fi
