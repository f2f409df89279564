#!/usr/bin/env bash
# Runs in the VM (make demo): N image-recognition function instances with UPM off and on.
#   demo.sh [instances] [memory budget MiB] [demo_function.py options...]
set -euo pipefail
cd "$(dirname "$0")"
echo "kernel $(uname -r); UPM module loaded: $(test -d /sys/kernel/mm/upm && echo yes || echo no)"
"${UPM_PYTHON:-python3}" demo_function.py --instances "${1:-16}" \
	--budget-mib "${2:-1024}" "${@:3}" --out "$UPM_VM_OUT/results"
