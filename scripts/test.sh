#!/usr/bin/env bash
# Installs what the tests need (once), then lints, type-checks and runs pytest.
# Arguments go to pytest: scripts/test.sh -k unpack -x
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LOG_NAME=test.sh
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

ensure_apt_packages "${AIRGAP_APT_PACKAGES[@]}"
ensure_venv
activate_venv

log "ruff check"
ruff check airgap tests
log "ruff format --check"
ruff format --check airgap tests
log "mypy"
mypy airgap

log "pytest $*"
status=0
pytest "$@" || status=$?
if ((status == 5)); then
    die "pytest collected no tests (exit 5)"
fi
exit "$status"
