#!/usr/bin/env bash
# Install the Debian packages agentshim builds and tests with, when missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libcap-dev libseccomp-dev libnl-3-dev libnl-route-3-dev libssl-dev
      nlohmann-json3-dev libcli11-dev libsystemd-dev libgtest-dev
      busybox-static runc crun python3-pytest python3-cryptography python3-jsonschema iproute2
      curl openssl docker.io containerd podman conmon python3-yaml tinyproxy
      python3-grpcio python3-grpc-tools containernetworking-plugins jq nodejs
      libnftables-dev libnftables1 liblmdb-dev
      libbpf-dev libelf-dev zlib1g-dev  # the exec observer's BPF program (sandbox/bpf)
      qemu-system-x86 mmdebstrap cpio e2fsprogs)  # the last four: scripts/guest (make test-guest)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
# npm: part of NodeSource's nodejs package, Debian's own package otherwise.
if ! command -v npm >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends npm >/dev/null
fi
# The sigstore-js recipe's pinned packages (integration/verify-js/package-lock.json).
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ ! -d "$repo/integration/verify-js/node_modules/@sigstore/verify" ]; then
  cafile=/etc/ssl/certs/ca-certificates.crt  # also the TLS-intercepting proxy's CA, where there is one
  (cd "$repo/integration/verify-js" && npm_config_cafile=$cafile npm ci --no-audit --no-fund --loglevel=error)
fi
