#!/usr/bin/env bash
# Install the Debian packages agentshim builds and tests with, when missing.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
      libcap-dev libseccomp-dev libnl-3-dev libnl-route-3-dev libssl-dev
      nlohmann-json3-dev libboost-dev libcli11-dev libmount-dev libgtest-dev
      busybox-static runc crun python3-pytest python3-cryptography python3-jsonschema iproute2
      curl openssl docker.io containerd podman conmon python3-yaml tinyproxy
      python3-grpcio python3-grpc-tools containernetworking-plugins
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
