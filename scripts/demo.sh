#!/usr/bin/env bash
# Main job on an embedded default: record 5 s of the screen ($DISPLAY), or of the synthetic
# `testsrc` picture when no display is reachable, then print what was made.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -q -p castline-cli
BIN=target/release/castline
OUT=${1:-castline-demo.mp4}
SOURCE=testsrc
if [ -n "${DISPLAY:-}" ] && "$BIN" list displays >/dev/null 2>&1; then
  SOURCE=screen
else
  echo "demo: no X display reachable; recording the synthetic testsrc picture instead"
fi
"$BIN" record "$OUT" --source "$SOURCE" --duration 5 --stats text
ffprobe -v error -select_streams v:0 -count_frames \
  -show_entries stream=codec_name,profile,width,height,pix_fmt,r_frame_rate,nb_read_frames:format=duration,size \
  -of default=noprint_wrappers=1 "$OUT"
echo "demo: wrote $OUT"
