#!/usr/bin/env bash
# Installs everything the tests, the demo and the benchmarks need on Debian 12:
# apt packages (NBD servers, qemu-utils, libnbd) and a virtual environment in .venv
# built on Debian's Python so that python3-libnbd is importable next to our pins.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(qemu-utils nbdkit nbdkit-plugin-python nbd-server libnbd-bin python3-libnbd
              gnutls-bin openssl python3-venv python3-dev procps shellcheck)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "bootstrap: installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

# ansible-test bootstraps pip in its venvs with a script it downloads. An offline stand-in next to the
# clone (../shared/tools) is used when present; without it ansible-test downloads as upstream does.
shim=../shared/tools/ansible-test-get-pip.py
if [ -f "$shim" ]; then
    mkdir -p "$HOME/.ansible/test/cache"
    for v in 24_2 25_2; do
        cp "$shim" "$HOME/.ansible/test/cache/get_pip_$v.py"
    done
fi
echo "bootstrap: ready (.venv with $(.venv/bin/ansible --version | head -1))"
