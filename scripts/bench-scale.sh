#!/bin/sh
# Fleet scale (docs/benchmarks.md): the CRL with N revoked entries, SyncPeople of N people and
# an offboarding wave, on SQLite and on PostgreSQL, in one throwaway SoftHSM2 token and CA.
#   scripts/bench-scale.sh [TESSERA_BINARY] [`tessera bench` scale options…]
#   e.g. scripts/bench-scale.sh target/release/tessera --crl 1000000 --sync-people 100000 --offboard 10000
# PostgreSQL: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres, trust auth);
# a database tessera_bench_<random> is made and dropped. ONLY=sqlite or ONLY=postgres runs one.
set -eu
bin=${1:-target/release/tessera}
[ $# -gt 0 ] && shift
d=$(mktemp -d)
db=tessera_bench_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
cleanup() { psql -q "$admin" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true; rm -rf "$d"; }
trap cleanup EXIT
eval "$(softhsm/new-token.sh "$d/tok" bench)"
"$bin" ca init --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" >/dev/null
if [ "${ONLY:-sqlite}" = sqlite ] || [ -z "${ONLY:-}" ]; then
    "$bin" bench --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" \
        --database-url "sqlite:$d/bench.db" "$@"
fi
if [ "${ONLY:-postgres}" = postgres ] || [ -z "${ONLY:-}" ]; then
    psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
    "$bin" bench --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" \
        --database-url "${admin%/*}/$db" "$@"
fi
