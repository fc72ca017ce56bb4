#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz, AddressSanitizer) of every parser that reads
# bytes from the network or a child process. Not part of CI. Runs each target for its share of
# TOTAL executions (default 10 million in all), starting from the seeds in fuzz/seeds/ (the
# corpus grows in fuzz/corpus/, not committed), and prints executions and coverage per target.
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the run: turn it into a
# regression test in crates/castline/tests/ (see fuzz_regressions.rs).
#
#   fuzz/run.sh [TOTAL_EXECUTIONS] [TARGET…]      (SLOW_SECONDS=N for the two slow targets)
set -euo pipefail
cd "$(dirname "$0")"
total=${1:-10000000}
shift || true
# Shares of the total for the parsers that run at thousands of inputs per second. The hub
# (a str0m peer connection with its DTLS certificate per input: ~15/s) and the HTTP server (two
# TCP round trips per input: ~100/s) run for SLOW_SECONDS each instead (default 300).
declare -A share=(
  [signaling_json]=25 [livekit_signal]=25 [annexb_au]=15 [rtcp_compound]=15 [http_head]=20 [sdp_offer]=0 [whep_http]=0
)
slow_seconds=${SLOW_SECONDS:-300}
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(signaling_json livekit_signal annexb_au rtcp_compound http_head sdp_offer whep_http)

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo +nightly install cargo-fuzz --locked
fi

summary=()
for t in "${targets[@]}"; do
  runs=$(( total * ${share[$t]} / 100 ))
  limit=(-runs="$runs")
  [ "$runs" = 0 ] && limit=(-max_total_time="$slow_seconds")
  mkdir -p "corpus/$t"
  log=$(mktemp)
  echo "== $t: ${limit[*]}" >&2
  status=0
  cargo +nightly fuzz run --release "$t" "corpus/$t" "seeds/$t" -- \
    "${limit[@]}" -print_final_stats=1 -max_len=65536 -timeout=10 2>&1 | tee "$log" \
    | grep -E '^#[0-9]+ +(DONE|pulse)|ERROR|SUMMARY|panicked' >&2 || status=$?
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1 || true)
  cov=$(grep -oP '^#[0-9]+\s+DONE\s+cov: \K[0-9]+' "$log" | tail -1 || true)
  rate=$(grep -oP 'stat::average_exec_per_sec:\s*\K[0-9]+' "$log" | tail -1 || true)
  ft=$(grep -oP '^#[0-9]+\s+DONE\s+cov: [0-9]+ ft: \K[0-9]+' "$log" | tail -1 || true)
  secs=$(grep -oP 'stat::slowest_unit_time_sec:\s*\K[0-9]+' "$log" | tail -1 || true)
  crashed=$(grep -c 'SUMMARY: \|panicked at' "$log" || true)
  summary+=("$t execs=${execs:-?} exec/s=${rate:-?} cov=${cov:-?} ft=${ft:-?} crashes=${crashed} slowest_unit_s=${secs:-?}")
  rm -f "$log"
  if [ "$crashed" != 0 ]; then
    printf '%s\n' "${summary[@]}"
    echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
printf '%s\n' "${summary[@]}"
