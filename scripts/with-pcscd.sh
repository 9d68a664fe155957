#!/usr/bin/env bash
# Runs a command with its own pcscd and N virtual (vpcd) readers, kept apart from any system pcscd.
#
#   scripts/with-pcscd.sh [--readers N] [--base-port P] [--private-network] [--apdu-log] [--keep-logs] -- CMD ARGS...
#
# CMD runs in a private mount namespace where a tmpfs hides /run/pcscd (pcscd's socket path is fixed),
# so it never meets a system pcscd. Inside, a private pcscd offers N readers; a card (tessera-vpiv)
# attaches to a reader by connecting to 127.0.0.1:<port>. CMD sees:
#   TESSERA_VPCD_PORTS     comma-separated ports, one per reader ("35963,35964,...")
#   TESSERA_VPCD_READERS   the readers' PC/SC names in the same order, separated by ';'
#   TESSERA_VPCD_LOCK_DIR  a directory for per-port lock files (tests claim a reader with flock)
#   TESSERA_PCSCD_LOG      pcscd's log file
#   OPENSC_CONF            (unless already set) OpenSC's default config with room for all N readers
# The script exits with CMD's exit code; pcscd is stopped and the namespace vanishes with it.
#
# --readers N        number of readers (1..16, default 8)
# --base-port P      first port; reader i listens on P+i. Default: the first free range from 35963
#                    on (vpcd's own default), so several runs side by side each get their own ports.
# --private-network  also a private network namespace (loopback only): the vpcd driver listens on
#                    every interface, and this keeps its ports off the network. Off by default
#                    because it also hides host services (PostgreSQL on 127.0.0.1) from CMD.
# --apdu-log         make pcscd log every APDU (pcscd -d -a) into TESSERA_PCSCD_LOG
# --keep-logs        keep the run directory (pcscd config and log) and print its path
#
# `scripts/with-pcscd.sh -- bash` gives an interactive shell with the readers.
set -euo pipefail

usage() { sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

readers=8
base_port=
private_network=0
apdu_log=0
keep_logs=0
while (($#)); do
  case "$1" in
    --readers) readers="${2:?--readers needs a number}"; shift 2 ;;
    --base-port) base_port="${2:?--base-port needs a port}"; shift 2 ;;
    --private-network) private_network=1; shift ;;
    --apdu-log) apdu_log=1; shift ;;
    --keep-logs) keep_logs=1; shift ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) echo "with-pcscd: unknown option '$1' (the command goes after --)" >&2; usage ;;
  esac
done
(($#)) || { echo "with-pcscd: no command given; put it after --, e.g. scripts/with-pcscd.sh -- bash" >&2; exit 2; }
[[ "$readers" =~ ^[0-9]+$ ]] && ((readers >= 1 && readers <= 16)) \
  || { echo "with-pcscd: --readers must be 1..16 (pcscd allows 16 readers), got '$readers'" >&2; exit 2; }
if [[ -n "$base_port" ]]; then
  [[ "$base_port" =~ ^[0-9]+$ ]] && ((base_port >= 1024 && base_port + readers <= 65535)) \
    || { echo "with-pcscd: --base-port must leave room for $readers ports in 1024..65535, got '$base_port'" >&2; exit 2; }
fi

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ -z "${TESSERA_WITH_PCSCD_INSIDE:-}" ]]; then
  # Outside: make sure the parts exist, then re-enter this script in fresh namespaces.
  if ((EUID == 0)); then
    "$here/install-deps.sh"
  fi
  for tool in pcscd unshare mount pcsc_scan ss; do
    command -v "$tool" >/dev/null 2>&1 \
      || { echo "with-pcscd: '$tool' is missing; run scripts/install-deps.sh as root" >&2; exit 127; }
  done
  [[ -e /usr/lib/pcsc/drivers/serial/libifdvpcd.so ]] \
    || { echo "with-pcscd: the vpcd reader driver is missing; run scripts/install-deps.sh as root" >&2; exit 127; }
  ns=(--mount --propagation private)
  ((private_network)) && ns+=(--net)
  # Without root, a user namespace maps us to root inside so that we may mount and start pcscd.
  ((EUID == 0)) || ns+=(--map-root-user)
  # /run/pcscd must exist as a mount point; creating the empty directory does not disturb anything.
  [[ -d /run/pcscd ]] || mkdir -p /run/pcscd 2>/dev/null || true
  args=(--readers "$readers")
  [[ -n "$base_port" ]] && args+=(--base-port "$base_port")
  ((private_network)) && args+=(--private-network)
  ((apdu_log)) && args+=(--apdu-log)
  ((keep_logs)) && args+=(--keep-logs)
  exec env TESSERA_WITH_PCSCD_INSIDE=1 unshare "${ns[@]}" -- "$0" "${args[@]}" -- "$@"
fi

# Inside the namespaces.
if ((private_network)); then
  ip link set lo up 2>/dev/null || { echo "with-pcscd: cannot bring up loopback in the private network namespace (is iproute2 installed?)" >&2; exit 1; }
fi
[[ -d /run/pcscd ]] || { echo "with-pcscd: /run/pcscd does not exist and could not be created; run as root once" >&2; exit 1; }
mount -t tmpfs -o mode=0755,size=1m tessera-pcscd /run/pcscd

run_dir="$(mktemp -d "${TMPDIR:-/tmp}/tessera-pcscd.XXXXXX")"
conf_dir="$run_dir/reader.conf.d"
lock_dir="$run_dir/locks"
driver_dir="$run_dir/drivers"
vpcd_driver=/usr/lib/pcsc/drivers/serial/libifdvpcd.so
mkdir -p "$conf_dir" "$lock_dir" "$driver_dir"
log="$run_dir/pcscd.log"

# One vpcd entry offers two readers: slot 00 on CHANNELID, slot 01 on CHANNELID+1. pcscd names them
# FRIENDLYNAME + " 00 00" / " 00 01" and does not number entries with equal names, so each entry
# carries its first port in its name. "Yubico YubiKey" + the interface list makes ykman and
# yubico-piv-tool take the reader for a USB YubiKey 5, as they do with a real one.
# The vpcd driver keeps its connections in one static array indexed by slot only, so two entries
# that load the same library share (and fight over) the same two connections. Each entry therefore
# loads its own copy of the library: pcscd and the dynamic loader treat a copy as another driver.
entries=$(((readers + 1) / 2))
span=$((2 * entries)) # ports pcscd opens (an odd count still opens the entry's second port)

write_config() { # $1 = base port; fills ports[] and names[]
  local base=$1 i port name
  rm -f "$conf_dir"/vpcd-* "$driver_dir"/*
  ports=(); names=()
  for ((i = 0; i < readers; i += 2)); do
    port=$((base + i))
    name="Yubico YubiKey OTP+FIDO+CCID vpcd $port"
    cp "$vpcd_driver" "$driver_dir/libifdvpcd-$port.so"
    printf 'FRIENDLYNAME "%s"\nDEVICENAME   /dev/null:0x%04X\nLIBPATH      %s\nCHANNELID    0x%04X\n' \
      "$name" "$port" "$driver_dir/libifdvpcd-$port.so" "$port" >"$conf_dir/vpcd-$port"
    ports+=("$port"); names+=("$name 00 00")
    if ((i + 1 < readers)); then
      ports+=("$((port + 1))"); names+=("$name 00 01")
    fi
  done
}

ports_free() { # $1 = base port: no listener on any port of the span (in this network namespace)
  local p
  for ((p = $1; p < $1 + span; p++)); do
    ss -Htln "sport = :$p" 2>/dev/null | grep -q . && return 1
  done
  return 0
}

pcscd_pid=
stop_pcscd() {
  if [[ -n "$pcscd_pid" ]] && kill -0 "$pcscd_pid" 2>/dev/null; then
    kill -TERM "$pcscd_pid" 2>/dev/null || true
    wait "$pcscd_pid" 2>/dev/null || true
  fi
  pcscd_pid=
}
cleanup() {
  stop_pcscd
  if ((keep_logs)); then
    echo "with-pcscd: logs kept in $run_dir" >&2
  else
    rm -rf "$run_dir"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_pcscd() { # ready when pcscd lists every reader (pcsc_scan -r prints "i: name" lines and exits)
  local args=(--foreground --config "$conf_dir") listed missing name
  ((apdu_log)) && args+=(--debug --apdu)
  pcscd "${args[@]}" >"$log" 2>&1 &
  pcscd_pid=$!
  for _ in $(seq 1 100); do
    kill -0 "$pcscd_pid" 2>/dev/null || return 1
    listed="$(timeout 5 pcsc_scan -r 2>/dev/null || true)"
    missing=0
    for name in "${names[@]}"; do
      grep -qF -- "$name" <<<"$listed" || { missing=1; break; }
    done
    ((missing)) || return 0
    sleep 0.1
  done
  return 1
}

# With a given --base-port, only that one; otherwise the first free range from 35963 on. Another run
# may take the same range between the check and pcscd's bind: then some readers fail to start, and we
# move on to the next range.
if [[ -n "$base_port" ]]; then
  candidates=("$base_port")
else
  candidates=()
  for ((b = 35963; b + span <= 65535 && ${#candidates[@]} < 40; b += span)); do candidates+=("$b"); done
fi
ready=0
for base in "${candidates[@]}"; do
  ports_free "$base" || { [[ -n "$base_port" ]] && break; continue; }
  write_config "$base"
  if start_pcscd; then ready=1; break; fi
  stop_pcscd
done
if ((!ready)); then
  if [[ -n "$base_port" ]]; then
    echo "with-pcscd: could not offer $readers readers on ports $base_port..$((base_port + span - 1)) (in use?)" >&2
  else
    echo "with-pcscd: found no free range of $span ports from 35963 on" >&2
  fi
  [[ -s "$log" ]] && { echo "with-pcscd: last pcscd log:" >&2; cat "$log" >&2; }
  exit 1
fi

# OpenSC's PKCS#11 module gives each reader 4 virtual slots and stops at 16, so it would show only
# 4 of our readers. Unless the caller brings its own OPENSC_CONF, use Debian's default config plus
# room for every reader.
if [[ -z "${OPENSC_CONF:-}" ]]; then
  export OPENSC_CONF="$run_dir/opensc.conf"
  printf 'app default {\n\tframework pkcs15 {\n\t}\n}\napp opensc-pkcs11 {\n\tpkcs11 {\n\t\tmax_virtual_slots = %d;\n\t}\n}\n' \
    $((4 * readers + 4)) >"$OPENSC_CONF"
fi

export TESSERA_VPCD_PORTS TESSERA_VPCD_READERS TESSERA_VPCD_LOCK_DIR="$lock_dir" TESSERA_PCSCD_LOG="$log"
TESSERA_VPCD_PORTS="$(IFS=,; echo "${ports[*]}")"
TESSERA_VPCD_READERS="$(IFS=';'; echo "${names[*]}")"
unset TESSERA_WITH_PCSCD_INSIDE

set +e
"$@"
rc=$?
set -e
exit "$rc"
