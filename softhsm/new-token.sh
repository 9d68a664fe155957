#!/usr/bin/env bash
# Makes a throwaway SoftHSM2 token in DIR, with its own SOFTHSM2_CONF (token files inside DIR),
# random SO and user PINs in DIR/so-pin and DIR/user-pin (mode 0600, never printed), and an HSM
# config DIR/hsm.toml for Tessera (pin_file = DIR/user-pin). Prints the environment to use:
#   eval "$(softhsm/new-token.sh /tmp/tok)"
# Usage: softhsm/new-token.sh DIR [LABEL]      (LABEL defaults to "tessera")
# Never touches a system-wide token. Installs SoftHSM2 and OpenSC when missing (as root).
set -euo pipefail
umask 077

if [[ $# -lt 1 || $# -gt 2 || -z "$1" ]]; then
  echo "usage: $0 DIR [LABEL]" >&2
  exit 2
fi
dir=$1
label=${2:-tessera}
here=$(cd "$(dirname "$0")" && pwd)

module=""
find_module() {
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so \
           /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so /usr/lib64/pkcs11/libsofthsm2.so; do
    [[ -e $m ]] && { module=$m; return 0; }
  done
  return 1
}
if ! command -v softhsm2-util >/dev/null 2>&1 || ! command -v pkcs11-tool >/dev/null 2>&1 || ! find_module; then
  if [[ $(id -u) -eq 0 && -x $here/../scripts/install-deps.sh ]]; then
    "$here/../scripts/install-deps.sh" >&2
  fi
fi
if ! command -v pkcs11-tool >/dev/null 2>&1 || ! find_module; then
  echo "new-token: SoftHSM2 or OpenSC is not installed; run scripts/install-deps.sh as root (Debian packages softhsm2, opensc)" >&2
  exit 1
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
if [[ -e $dir/softhsm2.conf ]]; then
  echo "new-token: $dir already holds a token (softhsm2.conf); use an empty directory" >&2
  exit 1
fi
mkdir -m 700 "$dir/tokens"

cat >"$dir/softhsm2.conf" <<CONF
# Throwaway SoftHSM2 configuration made by softhsm/new-token.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF

# Random PINs: 16 hex digits for the user, 32 for the security officer. Written, never printed.
new_pin() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
new_pin 8 >"$dir/user-pin"
new_pin 16 >"$dir/so-pin"
chmod 600 "$dir/user-pin" "$dir/so-pin"

export SOFTHSM2_CONF=$dir/softhsm2.conf
# PINs go to pkcs11-tool through its `env:NAME` form, so they are never on a command line.
# Each call gets them in its own environment only.
pkcs11=(pkcs11-tool --module "$module")
SO_PIN=$(<"$dir/so-pin") "${pkcs11[@]}" --slot-index 0 --init-token --label "$label" \
  --so-pin env:SO_PIN >/dev/null
SO_PIN=$(<"$dir/so-pin") USER_PIN=$(<"$dir/user-pin") "${pkcs11[@]}" --token-label "$label" \
  --login --login-type so --so-pin env:SO_PIN --init-pin --new-pin env:USER_PIN >/dev/null

cat >"$dir/hsm.toml" <<TOML
# HSM config for the throwaway SoftHSM2 token "$label" (made by softhsm/new-token.sh).
module = "$module"
token_label = "$label"
pin_file = "$dir/user-pin"
pool_size = 4

[keys]
root = "pkcs11:token=$label;object=tessera-root;type=private"
issuing = "pkcs11:token=$label;object=tessera-issuing;type=private"
TOML
chmod 644 "$dir/hsm.toml"

printf 'export SOFTHSM2_CONF=%q TESSERA_HSM_CONFIG=%q\n' "$dir/softhsm2.conf" "$dir/hsm.toml"
