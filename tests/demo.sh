#!/usr/bin/env bash
# Runs in the VM (make demo): the built-in density workload of 4 function instances.
set -euo pipefail
cd "$(dirname "$0")"
echo "kernel $(uname -r); UPM module loaded: $(test -d /sys/kernel/mm/upm && echo yes || echo no)"
build/upm_demo "${UPM_DEMO_INSTANCES:-4}" "${UPM_DEMO_WEIGHTS_MIB:-32}" "${UPM_DEMO_PRIVATE_MIB:-4}"
echo
"${UPM_PYTHON:-python3}" demo_python.py "${UPM_DEMO_INSTANCES:-4}"
