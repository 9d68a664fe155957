#!/bin/bash
# Issuance rate of Tessera (gRPC IssueFromCsr over mutual TLS, SQLite and PostgreSQL, CA key in
# SoftHSM2) next to smallstep step-ca (/1.0/sign, key in SoftHSM2, badger syncing each write;
# built from Debian's source packages by ../shared/peers/setup.sh) with 1, 4 and 16 clients,
# in one run: step-ca, Tessera, step-ca again (A B A). Prints every rate, the raw C_Sign P-256
# rate of Tessera's token, and Tessera / step-ca (step-ca = mean of its two runs).
#   scripts/bench-issuance.sh [TESSERA_BINARY] [STEPCA_SECONDS] [extra `tessera bench` options…]
set -euo pipefail
bin=${1:-target/release/tessera}
seconds=${2:-5}
[ $# -gt 0 ] && shift
[ $# -gt 0 ] && shift
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${TESSERA_PEERS:-$here/../shared/peers}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
stepca() { # $1 = pass
  for n in 1 4 16; do
    "$peers/stepca_bench.sh" --clients "$n" --seconds "$seconds" | tail -1 |
      sed -n "s/^step-ca: \([0-9]*\) clients: \([0-9.]*\) certs\/s.*/$1 \1 \2/p" >> "$out/stepca"
  done
}
stepca 1
"$here/scripts/bench-grpc.sh" "$bin" "$@" | tee "$out/tessera"
stepca 2
echo
echo "step-ca runs (pass, clients, certs/s):"
cat "$out/stepca"
echo
awk '
  FNR == NR { sum[$2] += $3; runs[$2]++; next }
  /^tessera bench --grpc:/ { db = ($0 ~ /PostgreSQL/) ? "PostgreSQL" : "SQLite" }
  /^gRPC IssueFromCsr \(/ { n = $(NF-3); rate = $NF
    if (runs[n]) printf "Tessera %-10s %2d client(s): %8.1f/s   step-ca %8.1f/s   ratio %.2fx\n", db, n, rate, sum[n] / runs[n], rate / (sum[n] / runs[n]) }
' "$out/stepca" "$out/tessera"
