#!/usr/bin/env bash
# Installs everything Tessera's demo and tests need on a fresh Debian machine (run as root).
# Idempotent: installs only what is missing. Used by scripts/demo.sh and scripts/test.sh.
set -euo pipefail

apt_packages=(
  softhsm2 opensc opensc-pkcs11 libengine-pkcs11-openssl   # HSM (SoftHSM2) and OpenSC's pkcs11-tool / PKCS#11 module
  pcscd vsmartcard-vpcd libpcsclite-dev pcsc-tools         # PC/SC daemon, the vpcd virtual reader, headers for the pcsc crate
  yubico-piv-tool                                          # Yubico's own PIV client, used against tessera-vpiv
  nginx curl openssl                                       # relying party in the end-to-end test
  protobuf-compiler pkg-config util-linux                  # protoc for tonic-build; unshare for private pcscd
  iproute2 procps                                          # ss and ip for scripts/with-pcscd.sh; pgrep for the demo's nginx reload
)
python_packages=(pkilint yubikey-manager grpcio grpcio-tools)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing Debian packages: ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

pymissing=()
for p in "${python_packages[@]}"; do
  python3 -m pip show -q "$p" >/dev/null 2>&1 || pymissing+=("$p")
done
if ((${#pymissing[@]})); then
  echo "install-deps: installing Python packages: ${pymissing[*]}" >&2
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${pymissing[@]}"
fi

# ykman and pkilint install console scripts; pyenv needs a rehash to expose them.
command -v pyenv >/dev/null 2>&1 && pyenv rehash || true

# The system pcscd is not used: tests and the demo start their own in a private mount namespace.
# Debian's package starts one through systemd socket activation where systemd runs; stop it if so.
exit 0
