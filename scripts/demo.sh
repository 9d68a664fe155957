#!/usr/bin/env bash
# The README's main job: on a fresh Debian machine (as root) install what is missing, build
# Tessera, make a throwaway SoftHSM2 token and run the CA ceremony in it, then (scripts/demo-token.sh,
# inside a private pcscd) start the server and a virtual YubiKey, have HR create a person over
# gRPC, enroll the token at the "help desk" with `tessera station enroll`, and log the person in
# to a local nginx that requires a client certificate, with curl using the token's key through
# OpenSC; then HR suspends the person and nginx refuses them, and reinstates them and nginx lets
# them in again; then the desk renews the 9a certificate in place (`tessera station renew`,
# forced by an admin since it is not yet in its renewal window) and nginx accepts the new one,
# the superseded one being revoked in the CRL. Everything it makes lives in one temporary
# directory, removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "1. install missing Debian and Python packages (scripts/install-deps.sh)"
scripts/install-deps.sh
echo "softhsm2, pcscd + vpcd, opensc, yubico-piv-tool, nginx, curl, the OpenSSL pkcs11 engine and python grpcio are present"

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
"$tessera" ca init --organization "Tessera Demo" | sed 's/^/  /'
echo "public chain written to $TESSERA_DATA_DIR: $(cd "$TESSERA_DATA_DIR" && echo *)"

step "4b. the operator CA for API client certificates, under the same root, key in the HSM (tessera ca init-operators)"
"$tessera" ca init-operators --organization "Tessera Demo" | sed 's/^/  /'

step "5. the HSM's AES key that wraps each token's management key and PUK (tessera admin init-wrapping-key)"
"$tessera" admin init-wrapping-key --hsm-config "$TESSERA_HSM_CONFIG" | sed 's/^/  /'

step "6. the server's configuration, its TLS certificate, and client certificates for HR and the help desk"
mkdir -p "$work/server"
# The server's own TLS certificate: self-signed for localhost here, an end-entity certificate
# (CA:FALSE, serverAuth) as rustls insists; in production one from your PKI.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/server/server.key" \
  -out "$work/server/server.pem" 2>/dev/null
cat >"$work/server/tessera.toml" <<CONF
[grpc]
listen = "127.0.0.1:0"

[http]
listen = "127.0.0.1:0"
ca_chain = "$TESSERA_DATA_DIR/chain.pem"

[tls]
certificate = "server.pem"
private_key = "server.key"
client_ca = "$TESSERA_DATA_DIR/operator-ca.pem"

[database]
url = "sqlite:tessera.db"

[ca]
hsm_config = "$TESSERA_HSM_CONFIG"
data_dir = "$TESSERA_DATA_DIR"
CONF
export TESSERA_CONFIG=$work/server/tessera.toml
for role in hr helpdesk admin; do
  "$tessera" admin issue-client-cert --role "$role" --name "demo $role" \
    --out-cert "$work/server/$role.pem" --out-key "$work/server/$role.key" | sed 's/^/  /'
done
echo "  config $TESSERA_CONFIG; client certificates from the operator CA carry their role (tessera:role:hr, tessera:role:helpdesk, tessera:role:admin)"

step "7. the rest runs beside a private pcscd with virtual readers (scripts/with-pcscd.sh)"
export DEMO_WORK="$work"
scripts/with-pcscd.sh --readers 2 -- scripts/demo-token.sh

printf '\ndemo: done: CA keys in the HSM; a virtual YubiKey enrolled at the help desk (keys born on the token, attested, certified); the person logged in to nginx with it, was refused while suspended, and let in again once reinstated; the desk renewed its 9a certificate in place (PIN and 9c untouched) and nginx accepts the new one while the superseded one is revoked\n'
