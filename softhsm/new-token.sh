#!/usr/bin/env bash
# Makes a throwaway SoftHSM2 token under DIR (its own SOFTHSM2_CONF, token directory inside DIR)
# and a Tessera HSM config for it, then prints the environment to use:
#
#   eval "$(softhsm/new-token.sh /tmp/hsm1 [LABEL])"
#
# The SO PIN and user PIN are random; the user PIN is written to DIR/user-pin (mode 0600) and the
# SO PIN to DIR/so-pin (0600); neither is printed. softhsm2-util only takes PINs as arguments, so
# they are visible in this script's process list for the instant the token is initialised; this
# is a throwaway test token, never a production one. Nothing here touches a system-wide token.
set -euo pipefail

if (($# < 1 || $# > 2)); then
  echo "usage: $0 DIR [TOKEN_LABEL]" >&2
  exit 2
fi
dir=$1
label=${2:-tessera}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if ! command -v softhsm2-util >/dev/null 2>&1 || ! command -v pkcs11-tool >/dev/null 2>&1; then
  "$here/../scripts/install-deps.sh" >&2
fi

module=
for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so /usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so; do
  [[ -e $m ]] && { module=$m; break; }
done
[[ -n $module ]] || { echo "new-token: libsofthsm2.so not found; run scripts/install-deps.sh" >&2; exit 1; }

umask 077
mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
if [[ -e $dir/softhsm2.conf ]]; then
  echo "new-token: $dir already holds a token (softhsm2.conf exists); use an empty directory" >&2
  exit 1
fi
cat >"$dir/softhsm2.conf" <<EOF
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
EOF

random_pin() { od -An -tx1 -N12 /dev/urandom | tr -d ' \n'; }
so_pin=$(random_pin)
user_pin=$(random_pin)
printf '%s\n' "$so_pin" >"$dir/so-pin"
printf '%s\n' "$user_pin" >"$dir/user-pin"
chmod 600 "$dir/so-pin" "$dir/user-pin"

SOFTHSM2_CONF=$dir/softhsm2.conf softhsm2-util --init-token --free --label "$label" \
  --so-pin "$so_pin" --pin "$user_pin" >/dev/null
unset so_pin user_pin

cat >"$dir/hsm.toml" <<EOF
# Throwaway SoftHSM2 token made by softhsm/new-token.sh; see docs/hsm.md for the format.
module = "$module"
token_label = "$label"
pin_file = "$dir/user-pin"
pool_size = 4

[keys]
root_ca = "pkcs11:token=$label;object=tessera-root-ca;type=private"
issuing_ca = "pkcs11:token=$label;object=tessera-issuing-ca;type=private"
wrapping = "pkcs11:token=$label;object=tessera-wrapping;type=secret-key"
EOF
chmod 644 "$dir/hsm.toml"

echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
echo "export TESSERA_HSM_CONFIG=$dir/hsm.toml"
