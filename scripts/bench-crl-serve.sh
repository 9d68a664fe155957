#!/bin/sh
# The first GET /crl of `tessera serve` (a process of its own) over N revoked certificates, and
# the server's peak resident memory (VmHWM), on PostgreSQL. Rows are made by SQL
# (generate_series) with placeholder blobs of a real certificate's sizes (tbs 500 bytes, der
# 700 bytes, never signed): any binary that serves /crl can be measured the same way, so an
# older build and this one compare in one run.
#   scripts/bench-crl-serve.sh TESSERA_BINARY N [TESSERA_BINARY …]
# PostgreSQL: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres, trust auth);
# a database tessera_bench_<random> per binary is made and dropped.
set -eu
n=$2
bins="$1"
shift 2
for b in "$@"; do bins="$bins $b"; done
admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
d=$(mktemp -d)
dbs=""
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    for db in $dbs; do psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; done
    rm -rf "$d"
}
trap cleanup EXIT
eval "$(softhsm/new-token.sh "$d/tok" bench)"
first=${bins%% *}
"$first" ca init --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" >/dev/null
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$d/server.key" -out "$d/server.pem" -days 2 2>/dev/null
chmod 600 "$d/server.key"
# CPU seconds (user + system) a process has used so far.
cpu() { awk '{ sub(/.*\) /, ""); printf "%.2f", ($12 + $13) / 100 }' "/proc/$1/stat"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
for bin in $bins; do
    db=tessera_bench_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    dbs="$dbs $db"
    psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
    url="${admin%/*}/$db"
    http=$(free_port)
    cat > "$d/tessera.toml" <<EOF
[grpc]
listen = "127.0.0.1:0"
[http]
listen = "127.0.0.1:$http"
[tls]
certificate = "server.pem"
private_key = "server.key"
client_ca = "server.pem"
[database]
url = "$url"
[ca]
hsm_config = "$d/tok/hsm.toml"
data_dir = "$d/ca"
EOF
    "$bin" serve --config "$d/tessera.toml" >"$d/serve.log" 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$http/healthz" >/dev/null; do
        kill -0 "$pid" || { cat "$d/serve.log"; exit 1; }
        sleep 0.5
    done
    start=$(date +%s.%N)
    psql -q "$url" <<EOF
INSERT INTO certificates (serial, person_id, token_id, profile, status, tbs, der, sha256, not_before,
    not_after, revocation_reason, revoked_at, created_at, updated_at)
SELECT '7e' || lpad(to_hex(g), 30, '0'), NULL, NULL, 'bench-placeholder', 'revoked',
    decode(repeat('ab', 500), 'hex'), decode(repeat('cd', 700), 'hex'), NULL,
    '2026-01-01T00:00:00Z', '2036-01-01T00:00:00Z', 1, '2026-06-01T00:00:00Z',
    '2026-01-01T00:00:00Z', '2026-06-01T00:00:00Z'
FROM generate_series(1, $n) AS g;
UPDATE crl_state SET status_changes = status_changes + 1 WHERE id = 1;
EOF
    loaded=$(date +%s.%N)
    rss_before=$(awk '/VmRSS/ {print int($2/1024)}' "/proc/$pid/status")
    cpu0=$(cpu "$pid")
    t0=$(date +%s.%N)
    bytes=$(curl -sf -o /dev/null -w '%{size_download}' "http://127.0.0.1:$http/crl")
    t1=$(date +%s.%N)
    cpu1=$(cpu "$pid")
    bytes2=$(curl -sf -o /dev/null -w '%{size_download}' "http://127.0.0.1:$http/crl")
    t2=$(date +%s.%N)
    peak=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
    echo "$bin: $n revoked entries (loaded by SQL in $(echo "$loaded - $start" | bc) s)"
    echo "  first GET /crl  $(echo "$t1 - $t0" | bc) s ($(echo "$cpu1 - $cpu0" | bc) s CPU in the server), $bytes bytes"
    echo "  second GET /crl $(echo "$t2 - $t1" | bc) s, $bytes2 bytes"
    echo "  server RSS before $rss_before MiB, peak (VmHWM) $peak MiB"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
done
