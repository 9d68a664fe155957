#!/usr/bin/env bash
# Runs every Tessera test on a fresh Debian machine (as root): installs what is missing, builds,
# and runs the unit and integration tests against real parts — SoftHSM2 tokens, a private pcscd
# with vpcd readers and tessera-vpiv cards, PostgreSQL on 127.0.0.1:5432 and SQLite — then the
# fuzz targets for a short, bounded time. CI (.ci/run) runs exactly this command.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "test: installing cargo-nextest from crates.io" >&2
  cargo install --locked cargo-nextest
fi

if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  echo "test: installing the clippy and rustfmt components" >&2
  rustup component add clippy rustfmt
fi

# Formatting first, failing fast: a style error costs seconds, not a build.
cargo fmt --check

# Lints during the one build the tests use: clippy's driver compiles our own packages
# (RUSTC_WORKSPACE_WRAPPER applies to workspace members only), so the dependencies are compiled
# once instead of once more for a separate `cargo clippy` check pass (about six minutes on two
# cores). CLIPPY_ARGS is `-D warnings` in clippy's own argument encoding: every rustc or clippy
# warning fails the build, before any test runs. The lint levels are in Cargo.toml's
# [workspace.lints]. Exported, so the demo's `cargo build` below reuses the same artifacts.
RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

# Every test runs inside one private pcscd (its own mount namespace) so that card tests never
# meet a system pcscd; tests that need no reader simply ignore it. `--workspace`: the `tessera`
# package and the virtual card `tessera-vpiv` (whose binary the card tests start).
scripts/with-pcscd.sh -- cargo nextest run --workspace --no-fail-fast --failure-output final "$@"

# The README's main job end to end, as a user runs it (tests/it/station.rs covers the same flow
# piece by piece; this proves the script itself works).
scripts/demo.sh
echo "demo: 1 passed, 0 failed"

# The parsers that face untrusted bytes (attestation certificates, card APDUs) get a short,
# bounded coverage-guided fuzz run on the stable toolchain (`-s none`: no sanitizer, which
# would need nightly). A crash fails the run and leaves the input under fuzz/artifacts/.
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "test: installing cargo-fuzz from crates.io" >&2
  cargo install --locked cargo-fuzz
fi
fuzz_seconds="${TESSERA_FUZZ_SECONDS:-20}"
(
  cd fuzz
  unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS   # the fuzz build is its own workspace
  for target in attest_parse vpiv_apdu; do
    mkdir -p "corpus/$target"
    seeds=()
    [[ -d "seeds/$target" ]] && seeds=("seeds/$target")
    echo "test: fuzzing $target for ${fuzz_seconds}s" >&2
    cargo +stable fuzz run -s none "$target" "corpus/$target" "${seeds[@]}" -- \
      -max_total_time="$fuzz_seconds" -print_final_stats=1 2>&1 | tail -n 12
  done
)
echo "fuzz: 2 passed, 0 failed"
