#!/usr/bin/env bash
# OCSP answers per second of `tessera serve` next to nginx serving the very same response bytes
# as a static file, same client (ApacheBench `ab`, POST of one DER OCSP request, keep-alive),
# and of a second `tessera serve` whose HSM is slow (softhsm/slow-pkcs11.c in front of
# SoftHSM2, SLOW_MS per signature, one at a time): the three interleaved round by round, median
# of the rounds. Prints each server's ratio to nginx and the HSM signatures it spent per OCSP
# request (from its /metrics).
#   scripts/bench-ocsp.sh [TESSERA_BINARY] [REQUESTS_PER_ROUND] [ROUNDS] [SLOW_MS]
# defaults: target/release/tessera 20000 5 20. Everything lives in a throwaway directory
# (SoftHSM2 token, CA, SQLite database, nginx prefix) removed at the end.
set -euo pipefail
bin=$(realpath "${1:-target/release/tessera}")
requests=${2:-20000}
rounds=${3:-5}
slow_ms=${4:-20}
concurrency=8
here=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v ab >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    apt-get install -y -qq --no-install-recommends apache2-utils nginx >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends apache2-utils nginx >/dev/null; }
  fi
fi
for tool in ab nginx gcc curl openssl; do
  command -v "$tool" >/dev/null || { echo "bench-ocsp: $tool is not installed (Debian: apache2-utils, nginx, gcc, curl, openssl)" >&2; exit 1; }
done

d=$(mktemp -d)
server_pids=()
nginx_pid=""
cleanup() {
  for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  [[ -n $nginx_pid ]] && kill "$nginx_pid" 2>/dev/null
  rm -rf "$d"
}
trap cleanup EXIT

eval "$("$here/softhsm/new-token.sh" "$d/tok" bench)"
"$bin" ca init --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" >/dev/null
gcc -O2 -shared -fPIC -o "$d/slow-pkcs11.so" "$here/softhsm/slow-pkcs11.c" -ldl -lpthread
module=$(sed -n 's/^module = "\(.*\)"$/\1/p' "$d/tok/hsm.toml")
sed "s|^module = .*|module = \"$d/slow-pkcs11.so\"|" "$d/tok/hsm.toml" >"$d/tok/slow-hsm.toml"
export SLOW_PKCS11_TARGET=$module SLOW_PKCS11_DELAY_MS=$slow_ms

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
  -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$d/server.key" \
  -out "$d/server.pem" 2>/dev/null
config() { # HSM_CONFIG OUT
  cat >"$2" <<CONF
[grpc]
listen = "127.0.0.1:0"

[http]
listen = "127.0.0.1:0"

[tls]
certificate = "$d/server.pem"
private_key = "$d/server.key"
client_ca = "$d/server.pem"

[database]
url = "sqlite:$3"

[ca]
hsm_config = "$1"
data_dir = "$d/ca"
CONF
}
config "$d/tok/hsm.toml" "$d/fast.toml" "$d/fast.db"
config "$d/tok/slow-hsm.toml" "$d/slow.toml" "$d/slow.db"
# The certificate asked about: the responder's own (recorded in the database, status good).
# Each server has its own copy of the database.
"$bin" ca init-ocsp --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" --config "$d/fast.toml" >/dev/null
sqlite3 "$d/fast.db" ".backup $d/slow.db" 2>/dev/null || cp "$d/fast.db" "$d/slow.db"
openssl ocsp -issuer "$d/ca/issuing.pem" -cert "$d/ca/ocsp.pem" -no_nonce -reqout "$d/req.der" >/dev/null

metric() { curl -s "http://$1/metrics" | sed -n "s/^$2 //p"; }
server_pids=()
start_server() { # NAME: serves $d/NAME.toml; sets $http
  "$bin" serve --config "$d/$1.toml" >"$d/$1.out" 2>"$d/$1.err" &
  server_pids+=($!)
  http=""
  for _ in $(seq 100); do
    http=$(sed -n 's/^tessera: HTTP listening on //p' "$d/$1.out")
    [[ -n $http ]] && curl -sf "http://$http/healthz" >/dev/null && break
    sleep 0.1
  done
  [[ -n $http ]] || { cat "$d/$1.err" >&2; exit 1; }
  # Wait until a response is stored: then a request is answered from storage.
  for _ in $(seq 100); do
    curl -s --data-binary "@$d/req.der" -H 'Content-Type: application/ocsp-request' \
      "http://$http/ocsp" -o "$d/resp.der"
    [[ $(metric "$http" 'tessera_ocsp_responses_total{result="stored"}') -gt 0 ]] && break
    sleep 0.2
  done
}

start_server slow
slow_http=$http
start_server fast
fast_http=$http
openssl ocsp -respin "$d/resp.der" -issuer "$d/ca/issuing.pem" -cert "$d/ca/ocsp.pem" -no_nonce \
  -CAfile "$d/ca/chain.pem" >"$d/check.out" 2>&1 || { cat "$d/check.out" >&2; exit 1; }

# nginx serves the same bytes (POST answered from the static file: error_page 405 =200).
mkdir -p "$d/nginx/www" "$d/nginx/logs"
cp "$d/resp.der" "$d/nginx/www/ocsp"
chmod 711 "$d" "$d/nginx" && chmod -R a+rX "$d/nginx/www"   # nginx's workers run as nobody
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$d/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $d/nginx/nginx.pid;
error_log $d/nginx/logs/error.log error;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $d/nginx/body;
  proxy_temp_path $d/nginx/proxy;
  fastcgi_temp_path $d/nginx/fastcgi;
  uwsgi_temp_path $d/nginx/uwsgi;
  scgi_temp_path $d/nginx/scgi;
  server {
    listen 127.0.0.1:$nginx_port;
    root $d/nginx/www;
    location = /ocsp { default_type application/ocsp-response; error_page 405 =200 \$uri; }
  }
}
CONF
nginx -p "$d/nginx" -c "$d/nginx/nginx.conf" &
nginx_pid=$!
sleep 0.5
cmp -s <(curl -s --data-binary "@$d/req.der" -H 'Content-Type: application/ocsp-request' \
  "http://127.0.0.1:$nginx_port/ocsp") "$d/resp.der" || { echo "bench-ocsp: nginx does not serve the response" >&2; cat "$d/nginx/logs/error.log" >&2; ls -la "$d/resp.der" >&2; exit 1; }

rate() { # URL
  ab -q -k -c "$concurrency" -n "$requests" -p "$d/req.der" -T application/ocsp-request "$1" 2>&1 |
    awk '/^Failed requests:/ { if ($3 != 0) { print "FAILED"; exit } } /^Non-2xx responses:/ { print "FAILED"; exit } /^Requests per second:/ { print $4 }'
}
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

signatures() { metric "$1" 'tessera_ocsp_hsm_signatures_total{purpose="request"}'; }
fast_before=$(signatures "$fast_http")
slow_before=$(signatures "$slow_http")
f=() w=() n=()
for _ in $(seq "$rounds"); do
  f+=("$(rate "http://$fast_http/ocsp")")
  w+=("$(rate "http://$slow_http/ocsp")")
  n+=("$(rate "http://127.0.0.1:$nginx_port/ocsp")")
done
fast_spent=$(($(signatures "$fast_http") - fast_before))
slow_spent=$(($(signatures "$slow_http") - slow_before))
fm=$(printf '%s\n' "${f[@]}" | median)
wm=$(printf '%s\n' "${w[@]}" | median)
nm=$(printf '%s\n' "${n[@]}" | median)
line() { # LABEL RATE SPENT
  printf '%-40s %12s %8s %14s\n' "$1" "$2" \
    "$(awk -v a="$2" -v b="$nm" 'BEGIN { if (b > 0) printf "%.0f%%", 100 * a / b }')" \
    "$(awk -v s="$3" -v r="$((requests * rounds))" 'BEGIN { if (r > 0) printf "%.4f", s / r }')"
}
echo "tessera bench-ocsp: ab -k -c $concurrency -n $requests POST, median of $rounds interleaved rounds; response $(stat -c %s "$d/resp.der") bytes"
echo "rounds (per second): tessera ${f[*]}; tessera slow HSM ${w[*]}; nginx ${n[*]}"
printf '%-40s %12s %8s %14s\n' "server" "answers/s" "/ nginx" "HSM sig/req"
line "nginx, static file" "$nm" 0
line "tessera serve, SoftHSM2" "$fm" "$fast_spent"
line "tessera serve, SoftHSM2 + ${slow_ms} ms C_Sign" "$wm" "$slow_spent"
