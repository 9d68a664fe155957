#!/usr/bin/env bash
# The server, token and relying-party part of scripts/demo.sh. It runs inside scripts/with-pcscd.sh
# (a private pcscd with vpcd readers) and expects from demo.sh: DEMO_WORK (the demo's temp dir:
# CA in $DEMO_WORK/ca, server files in $DEMO_WORK/server), TESSERA_BIN, TESSERA_VPIV_BIN,
# TESSERA_CONFIG, TESSERA_HSM_CONFIG, TESSERA_DATA_DIR and SOFTHSM2_CONF. Secrets (the person's
# PIN, the HSM PIN) go through 0600 files, never a command line.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${DEMO_WORK:?run scripts/demo.sh}" "${TESSERA_BIN:?run scripts/demo.sh}" "${TESSERA_VPIV_BIN:?run scripts/demo.sh}"
: "${TESSERA_VPCD_PORTS:?run under scripts/with-pcscd.sh}"

step() { printf '\n== %s\n' "$*"; }
serial=20261123
card="$DEMO_WORK/card"
srv="$DEMO_WORK/server"
rp="$DEMO_WORK/relying-party"
mkdir -p "$card" "$rp/logs" "$rp/tmp"
IFS=, read -r port _ <<<"$TESSERA_VPCD_PORTS"
IFS=';' read -r reader _ <<<"$TESSERA_VPCD_READERS"
pids=()
cleanup() {
  [[ -f $rp/nginx.pid ]] && nginx -p "$rp" -c "$rp/nginx.conf" -s stop 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

step "8. plug in a virtual YubiKey 5 (tessera-vpiv: firmware 5.7.4, serial $serial) in reader \"$reader\""
"$TESSERA_VPIV_BIN" --port "$port" --state "$card/state.json" --firmware 5.7.4 --serial "$serial" \
  --export-root "$card/attestation-root.pem" >"$card/card.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  ykman --reader "$reader" info >"$card/info.txt" 2>/dev/null && break
  sleep 0.2
done
sed 's/^/  /' "$card/info.txt"
echo "  (its attestation root is a test root the card made: $card/attestation-root.pem — never a Yubico key)"

step "9. start the server (tessera serve): gRPC over TLS 1.3 with client certificates, HTTP for the CRL"
cat >>"$TESSERA_CONFIG" <<CONF

[enrollment]
# Yubico's roots, and the virtual card's test root (a demo only: never trust it in production).
attestation_roots = ["$card/attestation-root.pem"]
CONF
(cd "$srv" && exec "$TESSERA_BIN" serve --config "$TESSERA_CONFIG") >"$srv/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do
  grep -q '^tessera: HTTP listening on ' "$srv/server.log" 2>/dev/null && break
  sleep 0.2
done
grpc=$(sed -n 's/^tessera: gRPC listening on //p' "$srv/server.log")
http=$(sed -n 's/^tessera: HTTP listening on //p' "$srv/server.log")
[[ -n $grpc && -n $http ]] || { echo "demo: the server did not start:" >&2; cat "$srv/server.log" >&2; exit 1; }
echo "  gRPC on $grpc, HTTP on $http"

step "10. HR creates the person over gRPC (a Python grpcio client with the hr certificate)"
hr() {
  python3 tests/python/hr_client.py "$grpc" "$srv/server.pem" "$srv/hr.pem" "$srv/hr.key" proto "$DEMO_WORK/python" "$@"
}
mkdir -p "$DEMO_WORK/python"
hr create DEMO-1 "Dana Demo" dana@corp.test dana@corp.test | sed 's/^/  /'

step "11. the help desk enrolls the token for DEMO-1 (tessera station enroll; the new PIN from a 0600 file)"
export TESSERA_STATION_SERVER="https://$grpc" TESSERA_STATION_CA_CERT="$srv/server.pem" \
  TESSERA_STATION_CLIENT_CERT="$srv/helpdesk.pem" TESSERA_STATION_CLIENT_KEY="$srv/helpdesk.key" \
  TESSERA_STATION_READER="$reader"
umask 077
# A random 8-digit PIN, as the person would type it; only in this 0600 file, without a newline
# (curl's PKCS#11 engine reads the whole file as the PIN).
printf '%08d' "$(( $(od -An -N4 -tu4 /dev/urandom) % 100000000 ))" >"$card/pin"
umask 022
"$TESSERA_BIN" station enroll --person DEMO-1 --profile piv-login --pin-file "$card/pin" | sed 's/^/  /'

step "12. the certificate on the token (yubico-piv-tool -a read-certificate -s 9a) passes openssl verify"
yubico-piv-tool --reader "$reader" -a read-certificate -s 9a >"$card/9a.pem"
openssl x509 -in "$card/9a.pem" -noout -subject -serial -ext subjectAltName,extendedKeyUsage | sed 's/^/  /'
openssl verify -CAfile "$TESSERA_DATA_DIR/root.pem" -untrusted "$TESSERA_DATA_DIR/issuing.pem" \
  -purpose sslclient "$card/9a.pem" | sed 's/^/  /'

step "13. a relying party: nginx, TLS 1.3 only, client certificate required, Tessera's chain and CRLs"
# nginx checks revocation for the whole chain, so besides Tessera's CRL (/crl, issuing CA) it
# needs the root's CRL for the issuing CA: signed in the HSM with the root key.
"$TESSERA_BIN" ca root-crl --out "$rp/root-crl.pem" | sed 's/^/  /'
refresh_crl() {
  curl -sS --fail "http://$http/crl" -o "$rp/tessera.crl"
  { cat "$rp/root-crl.pem"; openssl crl -inform DER -in "$rp/tessera.crl"; } >"$rp/crls.pem"
}
refresh_crl
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$rp/site.key" -out "$rp/site.pem" 2>/dev/null
site_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$rp/nginx.conf" <<CONF
daemon on;
worker_processes 1;
pid $rp/nginx.pid;
error_log $rp/logs/error.log info;
events { worker_connections 64; }
http {
  access_log $rp/logs/access.log;
  client_body_temp_path $rp/tmp/body; proxy_temp_path $rp/tmp/proxy; fastcgi_temp_path $rp/tmp/fastcgi;
  uwsgi_temp_path $rp/tmp/uwsgi; scgi_temp_path $rp/tmp/scgi;
  server {
    listen 127.0.0.1:$site_port ssl;
    server_name localhost;
    ssl_certificate $rp/site.pem;
    ssl_certificate_key $rp/site.key;
    ssl_protocols TLSv1.3;
    ssl_verify_client on;
    ssl_verify_depth 3;
    ssl_client_certificate $TESSERA_DATA_DIR/chain.pem;
    ssl_crl $rp/crls.pem;
    location / {
      default_type text/plain;
      return 200 "verify=\$ssl_client_verify subject=\$ssl_client_s_dn\n";
    }
  }
}
CONF
nginx -p "$rp" -c "$rp/nginx.conf"
echo "  nginx on https://localhost:$site_port/ (ssl_verify_client on; ssl_crl = root CRL + Tessera's /crl)"
reload_nginx() {
  local master old
  master=$(cat "$rp/nginx.pid"); old=$(pgrep -P "$master" | sort)
  nginx -p "$rp" -c "$rp/nginx.conf" -s reload 2>/dev/null
  # Wait until the old worker is gone, so that the next connection meets the new CRL.
  for _ in $(seq 1 300); do
    now=$(pgrep -P "$master" | sort)
    [[ -n $now ]] && ! comm -12 <(echo "$old") <(echo "$now") | grep -q . && return 0
    sleep 0.1
  done
  echo "demo: nginx did not reload" >&2; return 1
}

step "14. the person logs in: curl with the token's key through OpenSC's PKCS#11 module (PIN from the 0600 file)"
cat >"$rp/curl-openssl.cnf" <<CONF
openssl_conf = conf
[conf]
engines = engines
[engines]
pkcs11 = pkcs11
[pkcs11]
engine_id = pkcs11
dynamic_path = /usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so
MODULE_PATH = /usr/lib/x86_64-linux-gnu/opensc-pkcs11.so
init = 0
CONF
login() {
  OPENSSL_CONF="$rp/curl-openssl.cnf" curl -sS --tlsv1.3 --cacert "$rp/site.pem" --engine pkcs11 --key-type ENG \
    --key "pkcs11:type=private;object=PIV%20AUTH%20key?pin-source=file:$card/pin" --cert "$card/9a.pem" \
    "https://localhost:$site_port/"
}
login | sed 's/^/  /'
login | grep -q '^verify=SUCCESS ' || { echo "demo: nginx did not let the person in" >&2; exit 1; }

step "15. HR suspends the person over gRPC; the CRL is refreshed and nginx reloaded: refused"
hr suspend DEMO-1 "demo: on leave" | sed 's/^/  /'
refresh_crl; reload_nginx
login | grep -E 'title|verify=' | sed 's/^/  /'
login | grep -q '400 The SSL certificate error' || { echo "demo: nginx still let a suspended person in" >&2; exit 1; }
grep -o 'client SSL certificate verify error: [^,]*' "$rp/logs/error.log" | tail -n 1 | sed 's/^/  nginx: /'

step "16. HR reinstates the person; after the next CRL refresh nginx lets them in again"
hr reinstate DEMO-1 "demo: back" | sed 's/^/  /'
refresh_crl; reload_nginx
login | sed 's/^/  /'
login | grep -q '^verify=SUCCESS ' || { echo "demo: nginx did not let the reinstated person in" >&2; exit 1; }

step "17. desk renewal in place: too early for the help desk (renewal_window_days); an admin forces it for slot 9a"
# The certificate is a few seconds old: the help desk is refused, naming the window.
"$TESSERA_BIN" station renew --slot 9a --pin-file "$card/pin" 2>&1 | sed 's/^/  /' || true
cp "$card/9a.pem" "$card/9a-old.pem"
TESSERA_STATION_CLIENT_CERT="$srv/admin.pem" TESSERA_STATION_CLIENT_KEY="$srv/admin.key" \
  "$TESSERA_BIN" station renew --slot 9a --force --reason "demo: renewal" --pin-file "$card/pin" | sed 's/^/  /'
yubico-piv-tool --reader "$reader" -a read-certificate -s 9a >"$card/9a.pem"
cmp -s "$card/9a.pem" "$card/9a-old.pem" && { echo "demo: slot 9a still holds the old certificate" >&2; exit 1; }
openssl x509 -in "$card/9a.pem" -noout -serial | sed 's/^/  new /'

step "18. nginx accepts the renewed certificate (same PIN); the superseded one is revoked in the CRL nginx uses"
refresh_crl; reload_nginx
login | sed 's/^/  /'
login | grep -q '^verify=SUCCESS ' || { echo "demo: nginx did not accept the renewed certificate" >&2; exit 1; }
# The old certificate's key was replaced on the token by the renewal, so it cannot even be
# presented any more; what matters to a relying party is that it is revoked (superseded).
old_verify=$(openssl verify -crl_check -CAfile "$TESSERA_DATA_DIR/root.pem" \
  -untrusted "$TESSERA_DATA_DIR/issuing.pem" -CRLfile "$rp/crls.pem" "$card/9a-old.pem" 2>&1 || true)
printf '%s\n' "$old_verify" | sed 's/^/  old 9a: /'
grep -q 'certificate revoked' <<<"$old_verify" \
  || { echo "demo: the superseded certificate is not revoked in the CRL" >&2; exit 1; }
old_serial=$(openssl x509 -in "$card/9a-old.pem" -noout -serial | sed 's/^serial=//')
openssl crl -inform DER -in "$rp/tessera.crl" -noout -text | grep -A4 -i "Serial Number: $old_serial" \
  | sed 's/^ */  CRL: /'

step "19. what the help desk sees (tessera station status)"
"$TESSERA_BIN" station status | sed 's/^/  /'
