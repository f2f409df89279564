# Shared settings for every UPM script. Source it; do not execute it.
# shellcheck shell=bash

UPM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export UPM_ROOT

# The one toolchain the machines have; the kernel tree has no rust-toolchain.toml,
# so pin it for every rustc the kernel build or the module build starts.
export RUSTUP_TOOLCHAIN=1.95.0
export PATH="$HOME/.cargo/bin:$PATH"

# Build outputs live outside the repo so that a fresh clone (CI) reuses them.
export UPM_CACHE="${UPM_CACHE:-$HOME/.cache/upm}"
export UPM_KVER=6.12
export UPM_KSRC="$UPM_CACHE/linux-$UPM_KVER"

# Kernel flavour: debug (KASAN, lockdep; used by tests) or release (benchmarks).
export UPM_FLAVOUR="${UPM_FLAVOUR:-debug}"

upm_kbuild_dir() {
	echo "$UPM_CACHE/build-${1:-$UPM_FLAVOUR}"
}

upm_log() {
	printf '[upm] %s\n' "$*" >&2
}
