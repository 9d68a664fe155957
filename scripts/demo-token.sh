#!/usr/bin/env bash
# The virtual-YubiKey part of scripts/demo.sh. It runs inside scripts/with-pcscd.sh (a private
# pcscd with vpcd readers) and expects from demo.sh: DEMO_WORK (the demo's temp dir, holding the
# CA in $DEMO_WORK/ca and the HSM token), TESSERA_BIN, TESSERA_VPIV_BIN, TESSERA_HSM_CONFIG and
# TESSERA_DATA_DIR. The token's PIN and management key are the factory defaults of a fresh
# YubiKey, typed into the tools' prompts (never on a command line).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DEMO_WORK:?run scripts/demo.sh}" "${TESSERA_BIN:?run scripts/demo.sh}" "${TESSERA_VPIV_BIN:?run scripts/demo.sh}"
: "${TESSERA_VPCD_PORTS:?run under scripts/with-pcscd.sh}"

step() { printf '\n== %s\n' "$*"; }
factory_pin=123456
serial=20261123
card="$DEMO_WORK/card"
mkdir -p "$card"
IFS=, read -r port _ <<<"$TESSERA_VPCD_PORTS"
IFS=';' read -r reader _ <<<"$TESSERA_VPCD_READERS"

step "9. plug in a virtual YubiKey 5 (tessera-vpiv: firmware 5.7.4, serial $serial) in reader \"$reader\""
"$TESSERA_VPIV_BIN" --port "$port" --state "$card/state.json" --firmware 5.7.4 --serial "$serial" \
  --export-root "$card/attestation-root.pem" >"$card/card.log" 2>&1 &
card_pid=$!
trap 'kill "$card_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  ykman --reader "$reader" info >"$card/info.txt" 2>/dev/null && break
  sleep 0.2
done
sed 's/^/  /' "$card/info.txt"
echo "  (its attestation root is a test root the card made: $card/attestation-root.pem — never a Yubico key)"

step "10. the token generates an EC P-256 key in slot 9a (PIN once, touch cached) — ykman"
printf '\n' | ykman --reader "$reader" piv keys generate -a ECCP256 --pin-policy ONCE --touch-policy CACHED \
  9a "$card/9a-public.pem" 2>&1 | grep -v '^Enter a management key' | sed 's/^/  /'

step "11. the token proves it: slot attestation + device certificate (5FFF01), verified by tessera attest verify"
ykman --reader "$reader" piv keys attest 9a "$card/9a-attestation.pem" | sed 's/^/  /'
ykman --reader "$reader" piv certificates export f9 "$card/device.pem" | sed 's/^/  /'
"$TESSERA_BIN" attest verify --attestation "$card/9a-attestation.pem" --intermediate "$card/device.pem" \
  --roots "$card/attestation-root.pem" --expect-serial "$serial" --policy config/attestation-policy.toml \
  | sed 's/^/  /'

step "12. a CSR signed by the token's key (PIN typed at the prompt; touch answered by the virtual card)"
printf '%s\n' "$factory_pin" | ykman --reader "$reader" piv certificates request -s "CN=Demo Person" \
  9a "$card/9a-public.pem" "$card/9a.csr" 2>&1 | grep -v -e '^Enter PIN' -e GetPassWarning -e fallback_getpass -e 'may be echoed' | sed 's/^/  /'

step "13. the HSM-backed CA certifies the token's key (tessera ca sign-csr --profile tls-client)"
"$TESSERA_BIN" ca sign-csr --profile tls-client --csr "$card/9a.csr" --out "$card/9a-certificate.pem"
openssl x509 -in "$card/9a-certificate.pem" -noout -subject -serial -ext certificatePolicies | sed 's/^/  /'
echo "  (issued through the CSR path, which cannot see the attestation, so the certificate carries the"
echo "   'key not attested' policy; the help-desk enrollment of issue 7 binds the attestation itself)"
openssl verify -CAfile "$TESSERA_DATA_DIR/root.pem" -untrusted "$TESSERA_DATA_DIR/issuing.pem" \
  -purpose sslclient "$card/9a-certificate.pem" | sed 's/^/  /'

step "14. the certificate goes onto the token (ykman piv certificates import)"
printf '\n' | ykman --reader "$reader" piv certificates import 9a "$card/9a-certificate.pem" 2>&1 \
  | grep -v '^Enter a management key' | sed 's/^/  /'

step "15. a relying party's view: OpenSC's PKCS#11 module sees the key and certificate and signs with the token"
module=/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
[[ -e $module ]] || module=$(dpkg -L opensc-pkcs11 | grep '/opensc-pkcs11.so$' | head -n 1)
echo "Tessera demo: signed by a key that never left the token" >"$card/message.txt"
DEMO_PIN=$factory_pin pkcs11-tool --module "$module" --login --pin env:DEMO_PIN --sign --id 01 \
  --mechanism ECDSA-SHA256 --signature-format openssl --input-file "$card/message.txt" \
  --output-file "$card/message.sig" 2>&1 | sed 's/^/  /'
openssl x509 -in "$card/9a-certificate.pem" -noout -pubkey >"$card/9a-certified-public.pem"
openssl dgst -sha256 -verify "$card/9a-certified-public.pem" -signature "$card/message.sig" "$card/message.txt" \
  | sed 's/^/  /'
