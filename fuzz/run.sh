#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer via cargo-fuzz, AddressSanitizer) of every parser that reads
# bytes from the network or a child process. Not part of CI. Runs each target for its share of
# TOTAL executions (default 10 million in all), starting from the seeds in fuzz/seeds/ (the
# corpus grows in fuzz/corpus/, not committed), and prints executions and coverage per target.
# A crash leaves its input in fuzz/artifacts/TARGET/ and fails the run: turn it into a
# regression test in crates/castline/tests/ (see fuzz_regressions.rs).
#
#   fuzz/run.sh [TOTAL_EXECUTIONS] [TARGET…]
set -euo pipefail
cd "$(dirname "$0")"
total=${1:-10000000}
shift || true
# Shares of the total: the cheap parsers get most of it; the hub and the HTTP server cost a
# peer connection or a TCP round trip per input.
declare -A share=(
  [signaling_json]=30 [livekit_signal]=30 [annexb_au]=20 [rtcp_compound]=15 [sdp_offer]=3 [whep_http]=2
)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(signaling_json livekit_signal annexb_au rtcp_compound sdp_offer whep_http)

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
  mkdir -p "corpus/$t"
  log=$(mktemp)
  echo "== $t: $runs executions" >&2
  status=0
  cargo +nightly fuzz run --release "$t" "corpus/$t" "seeds/$t" -- \
    -runs="$runs" -print_final_stats=1 -max_len=65536 -timeout=10 2>&1 | tee "$log" \
    | grep -E '^#[0-9]+ +(DONE|pulse)|ERROR|SUMMARY|panicked' >&2 || status=$?
  execs=$(grep -oP 'stat::number_of_executed_units:\s*\K[0-9]+' "$log" | tail -1)
  cov=$(grep -oP '^#[0-9]+\s+DONE\s+cov: \K[0-9]+' "$log" | tail -1)
  ft=$(grep -oP '^#[0-9]+\s+DONE\s+cov: [0-9]+ ft: \K[0-9]+' "$log" | tail -1)
  secs=$(grep -oP 'stat::slowest_unit_time_sec:\s*\K[0-9]+' "$log" | tail -1)
  crashed=$(grep -c 'SUMMARY: \|panicked at' "$log" || true)
  summary+=("$t execs=${execs:-?} cov=${cov:-?} ft=${ft:-?} crashes=${crashed} slowest_unit_s=${secs:-?}")
  rm -f "$log"
  if [ "$crashed" != 0 ]; then
    printf '%s\n' "${summary[@]}"
    echo "fuzz: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
printf '%s\n' "${summary[@]}"
