#!/bin/sh
# Fleet scale (docs/benchmarks.md): the CRL with N revoked entries, SyncPeople of N people and
# an offboarding wave, on SQLite and on PostgreSQL, in one throwaway SoftHSM2 token and CA.
#   scripts/bench-scale.sh [TESSERA_BINARY] [`tessera bench` scale options…]
#   e.g. scripts/bench-scale.sh target/release/tessera --crl 1000000 --sync-people 100000 --offboard 10000
# PostgreSQL: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres, trust auth);
# a database tessera_bench_<random> is made and dropped. ONLY=sqlite or ONLY=postgres runs one.
# SLOW_MS=N: each run is repeated right after with the CA's HSM behind softhsm/slow-pkcs11.c,
# every C_Sign waiting N ms (one at a time): the slow-HSM check of docs/benchmarks.md.
set -eu
bin=${1:-target/release/tessera}
[ $# -gt 0 ] && shift
d=$(mktemp -d)
db=tessera_bench_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
cleanup() {
    for n in 1 2; do psql -q "$admin" -c "DROP DATABASE IF EXISTS ${db}_$n WITH (FORCE)" >/dev/null 2>&1 || true; done
    rm -rf "$d"
}
trap cleanup EXIT
eval "$(softhsm/new-token.sh "$d/tok" bench)"
"$bin" ca init --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" >/dev/null
hsm_configs="$d/tok/hsm.toml"
if [ -n "${SLOW_MS:-}" ]; then
    here=$(cd "$(dirname "$0")/.." && pwd)
    gcc -O2 -shared -fPIC -o "$d/slow-pkcs11.so" "$here/softhsm/slow-pkcs11.c" -ldl -lpthread
    module=$(sed -n 's/^module = "\(.*\)"$/\1/p' "$d/tok/hsm.toml")
    sed "s|^module = .*|module = \"$d/slow-pkcs11.so\"|" "$d/tok/hsm.toml" >"$d/tok/slow-hsm.toml"
    export SLOW_PKCS11_TARGET="$module" SLOW_PKCS11_DELAY_MS="$SLOW_MS"
    hsm_configs="$hsm_configs $d/tok/slow-hsm.toml"
fi
n=0
for hsm in $hsm_configs; do
    n=$((n + 1))
    [ "$hsm" = "$d/tok/hsm.toml" ] || echo "--- the same with every C_Sign ${SLOW_MS} ms slower (softhsm/slow-pkcs11.c)"
    if [ "${ONLY:-sqlite}" = sqlite ] || [ -z "${ONLY:-}" ]; then
        "$bin" bench --hsm-config "$hsm" --data-dir "$d/ca" \
            --database-url "sqlite:$d/bench-$n.db" "$@"
    fi
    if [ "${ONLY:-postgres}" = postgres ] || [ -z "${ONLY:-}" ]; then
        psql -q "$admin" -c "CREATE DATABASE ${db}_$n" >/dev/null
        "$bin" bench --hsm-config "$hsm" --data-dir "$d/ca" \
            --database-url "${admin%/*}/${db}_$n" "$@"
    fi
done
