#!/usr/bin/env bash
# Install everything the build, the VM and the tests need. Idempotent: a second run
# only checks and takes seconds.
set -euo pipefail
# shellcheck source=scripts/env.sh
source "$(dirname "$0")/env.sh"

DEB_PACKAGES=(
	bc bison busybox-static clang cpio flex git kmod libclang-dev libelf-dev
	libssl-dev lld llvm make pahole python3-pip qemu-system-x86 udev xz-utils
	linux-source-6.12 rsync crun jq libnuma-dev
)

missing=()
for pkg in "${DEB_PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
		missing+=("$pkg")
done
if ((${#missing[@]})); then
	upm_log "installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! command -v rustup >/dev/null; then
	upm_log "rustup is missing: these machines ship Rust 1.95.0 through rustup" >&2
	exit 1
fi
installed=$(rustup component list --installed --toolchain "$RUSTUP_TOOLCHAIN")
for comp in rust-src rustfmt clippy; do
	grep -q "^$comp" <<<"$installed" ||
		rustup component add --toolchain "$RUSTUP_TOOLCHAIN" "$comp"
done

if ! command -v bindgen >/dev/null; then
	upm_log "installing bindgen-cli from crates.io"
	cargo install --locked bindgen-cli
fi

if ! command -v vng >/dev/null; then
	upm_log "installing virtme-ng from PyPI"
	python3 -m pip install --quiet virtme-ng
fi
command -v vng >/dev/null || { upm_log "vng not on PATH after install"; exit 1; }

# The Python helper's test uses numpy, as function runtimes do.
if ! python3 -c 'import numpy' 2>/dev/null; then
	upm_log "installing numpy from PyPI"
	python3 -m pip install --quiet numpy
fi

# make demo draws its figure with matplotlib.
if ! python3 -c 'import matplotlib' 2>/dev/null; then
	upm_log "installing matplotlib from PyPI"
	python3 -m pip install --quiet matplotlib
fi

# make demo's function runs on ONNX Runtime, its model built with the onnx package.
if ! python3 -c 'import onnx, onnxruntime' 2>/dev/null; then
	upm_log "installing onnx and onnxruntime from PyPI"
	python3 -m pip install --quiet onnx onnxruntime
fi

# checkpatch.pl runs scripts/spdxcheck.py with the python3 on PATH.
if ! python3 -c 'import ply, git' 2>/dev/null; then
	upm_log "installing ply and GitPython from PyPI (checkpatch's SPDX check)"
	python3 -m pip install --quiet ply GitPython
fi

# make test validates the DaemonSet against Kubernetes' OpenAPI schemas (shipped in the
# package, no cluster or network needed).
if ! command -v kubernetes-validate >/dev/null; then
	upm_log "installing kubernetes-validate from PyPI"
	python3 -m pip install --quiet kubernetes-validate
fi

if [ ! -f /usr/src/linux-source-$UPM_KVER.tar.xz ]; then
	upm_log "linux-source-$UPM_KVER is installed but its tarball is missing"
	exit 1
fi
upm_log "setup complete"
