#!/usr/bin/env bash
# The README's main job: on a fresh Debian machine (as root) install what is missing, build
# Tessera, make a throwaway SoftHSM2 token, run the CA ceremony in it, issue a certificate for a
# CSR made by OpenSSL and check it with `openssl verify`; then plug in a virtual YubiKey
# (tessera-vpiv behind a private pcscd), have it generate a key, verify the token's attestation
# with `tessera attest verify`, certify the token's key and store the certificate on the token,
# and sign with the token through OpenSC's PKCS#11 module. Everything it makes lives in one
# temporary directory that is removed on exit. The help-desk enrollment through the server
# (issue 7) will replace the hand-driven token steps.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "1. install missing Debian and Python packages (scripts/install-deps.sh)"
scripts/install-deps.sh
echo "softhsm2, opensc, openssl and pkilint are present"

step "2. build tessera (cargo build)"
if ! command -v cargo >/dev/null 2>&1; then
  echo "demo: cargo is not installed; install the stable Rust toolchain (rustup) and run again" >&2
  exit 1
fi
cargo build --quiet --bins
tessera="$PWD/${CARGO_TARGET_DIR:-target}/debug/tessera"
export TESSERA_BIN="$tessera" TESSERA_VPIV_BIN="$PWD/${CARGO_TARGET_DIR:-target}/debug/tessera-vpiv"
echo "built $tessera"

work=$(mktemp -d -t tessera-demo.XXXXXX)
trap 'rm -rf "$work"; echo "demo: removed $work"' EXIT

step "3. throwaway SoftHSM2 token in $work/token (softhsm/new-token.sh)"
eval "$(softhsm/new-token.sh "$work/token" tessera-demo)"
export TESSERA_HSM_CONFIG=$work/token/hsm.toml
export TESSERA_DATA_DIR=$work/ca
echo "token \"tessera-demo\", own SOFTHSM2_CONF=$SOFTHSM2_CONF, HSM config $TESSERA_HSM_CONFIG"

step "4. CA ceremony: root (P-384) and issuing (P-256) keys generated in the HSM (tessera ca init)"
"$tessera" ca init --organization "Tessera Demo"
echo "public chain written to $TESSERA_DATA_DIR: $(cd "$TESSERA_DATA_DIR" && echo *)"
echo "key objects in the token (private keys: sensitive, never extractable):"
module=$(sed -n 's/^module = "\(.*\)"$/\1/p' "$TESSERA_HSM_CONFIG")
USER_PIN=$(<"$work/token/user-pin") pkcs11-tool --module "$module" --token-label tessera-demo \
  --login --pin env:USER_PIN -O 2>/dev/null | grep -E '^(Private|Public) Key Object|label:|Access:' | sed 's/^/  /'

step "5. a user key and CSR made by OpenSSL (EC P-256, CN=Alice Example)"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/alice.key" \
  -subj "/CN=Alice Example" -addext "subjectAltName=email:alice@example.org" \
  -out "$work/alice.csr" 2>/dev/null
echo "CSR: $work/alice.csr"

step "6. issue a certificate for the CSR under the tls-client profile (tessera ca sign-csr)"
"$tessera" ca sign-csr --profile tls-client --csr "$work/alice.csr" --out "$work/alice.pem"
openssl x509 -in "$work/alice.pem" -noout -subject -issuer -serial -dates -ext extendedKeyUsage,certificatePolicies

step "7. check the chain and the certificate with OpenSSL (openssl verify)"
openssl verify -CAfile "$TESSERA_DATA_DIR/root.pem" -untrusted "$TESSERA_DATA_DIR/issuing.pem" \
  -purpose sslclient "$work/alice.pem"

step "8. the virtual YubiKey part runs beside a private pcscd (scripts/with-pcscd.sh)"
export DEMO_WORK="$work"
scripts/with-pcscd.sh --readers 2 -- scripts/demo-token.sh

printf '\ndemo: done: CA keys in the HSM; a certificate issued and verified; a virtual YubiKey generated a key, proved it by attestation, got its certificate, and signed through PKCS#11\n'
