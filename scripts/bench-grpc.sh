#!/bin/sh
# Issuance through the gRPC API (IssueFromCsr, SoftHSM2, P-256) next to the raw C_Sign P-256
# rate of the same token, on SQLite and on PostgreSQL, in one throwaway SoftHSM2 token and CA.
#   scripts/bench-grpc.sh [TESSERA_BINARY] [extra `tessera bench` options…]
# PostgreSQL: PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres, trust auth);
# a database tessera_bench_<random> is made and dropped.
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
"$bin" bench --grpc --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" \
    --database-url "sqlite:$d/bench.db" "$@"
psql -q "$admin" -c "CREATE DATABASE $db" >/dev/null
"$bin" bench --grpc --hsm-config "$d/tok/hsm.toml" --data-dir "$d/ca" \
    --database-url "${admin%/*}/$db" "$@"
