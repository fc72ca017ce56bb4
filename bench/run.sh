#!/usr/bin/env bash
# Benchmark: castline vs ffmpeg CLI (x11grab → libx264 → MP4) vs GStreamer (ximagesrc →
# videoconvert → x264enc → mp4mux) capturing the same Xvfb content with the same preset and
# bitrate, one after another in the same run. Reports CPU seconds (user+sys of the capture
# process), achieved fps (frames in the file / seconds) and peak RSS, plus castline's ratios.
#
#   bench/run.sh [SECONDS]          # default 20 s per run; writes bench/out/ and prints a table
#   bench/run.sh 20 >> bench/RESULTS.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SECS=${1:-20}
OUT=bench/out
mkdir -p "$OUT"
cargo build --release -q -p castline-cli
CASTLINE=$PWD/target/release/castline
TESTKIT=$PWD/target/release/castline-testkit

XVFB_PID=""; CONTENT_PID=""
cleanup() { kill $CONTENT_PID $XVFB_PID 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

start_display() { # WIDTH HEIGHT CONTENT_ARGS...
  cleanup
  local w=$1 h=$2; shift 2
  export DISPLAY=:$((150 + RANDOM % 50))
  Xvfb "$DISPLAY" -screen 0 "${w}x${h}x24" -nolisten tcp -noreset >/dev/null 2>&1 &
  XVFB_PID=$!
  for _ in $(seq 50); do [ -e "/tmp/.X11-unix/X${DISPLAY#:}" ] && break; sleep 0.1; done
  "$TESTKIT" content "$@" >/dev/null 2>&1 &
  CONTENT_PID=$!
  sleep 3
}

frames_of() { ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets -of csv=p=0 "$1" 2>/dev/null || echo 0; }

measure() { # NAME FILE CMD... → "cpu_s rss_mb fps"
  local name=$1 file=$2; shift 2
  rm -f "$file"
  /usr/bin/time -f "%U %S %M %e" -o "$OUT/$name.time" "$@" >"$OUT/$name.log" 2>&1 || true
  read -r u s m e <"$OUT/$name.time" || true
  local frames; frames=$(frames_of "$file")
  awk -v u="$u" -v s="$s" -v m="$m" -v f="$frames" -v secs="$SECS" \
    'BEGIN { printf "%.2f %.0f %.1f", u + s, m / 1024, f / secs }'
}

row() { # JOB W H FPS PRESET CONTENT...
  local job=$1 w=$2 h=$3 fps=$4 preset=$5; shift 5
  start_display "$w" "$h" "$@"
  local n=$((fps * SECS))
  local c f g
  c=$(measure "$job-castline" "$OUT/$job-castline.mp4" "$CASTLINE" record "$OUT/$job-castline.mp4" \
      --fps "$fps" --preset "$preset" --bitrate 5M --duration "$SECS" --no-cursor --stats off --encoder x264)
  f=$(measure "$job-ffmpeg" "$OUT/$job-ffmpeg.mp4" ffmpeg -nostdin -y -loglevel error \
      -f x11grab -framerate "$fps" -video_size "${w}x${h}" -draw_mouse 0 -i "$DISPLAY" -t "$SECS" \
      -c:v libx264 -preset "$preset" -tune zerolatency -b:v 5M -maxrate 5M -bufsize 5M \
      -pix_fmt yuv420p -fps_mode passthrough "$OUT/$job-ffmpeg.mp4")
  g=$(measure "$job-gstreamer" "$OUT/$job-gstreamer.mp4" timeout -s INT $((SECS * 3)) gst-launch-1.0 -q -e \
      ximagesrc use-damage=false show-pointer=false num-buffers="$n" \
      ! "video/x-raw,framerate=$fps/1" ! videoconvert ! video/x-raw,format=I420 \
      ! x264enc speed-preset="$preset" tune=zerolatency bitrate=5000 ! mp4mux \
      ! filesink location="$OUT/$job-gstreamer.mp4")
  read -r cc cr cf <<<"$c"; read -r fc fr ff <<<"$f"; read -r gc gr gf <<<"$g"
  awk -v job="$job" -v cc="$cc" -v cr="$cr" -v cf="$cf" -v fc="$fc" -v fr="$fr" -v ff="$ff" \
      -v gc="$gc" -v gr="$gr" -v gf="$gf" 'BEGIN {
    printf "| %s | %.2f s / %.1f fps / %d MB | %.2f s / %.1f fps / %d MB | %.2f s / %.1f fps / %d MB | %.2f× | %.2f× | %.2f× |\n",
      job, cc, cf, cr, fc, ff, fr, gc, gf, gr,
      (fc > 0 ? cc / fc : 0), (gc > 0 ? cc / gc : 0), (gr > 0 ? cr / gr : 0) }'
}

echo
echo "### $(date -u +%Y-%m-%d) — $(nproc) × $(lscpu | sed -n 's/^Model name: *//p'), ${SECS} s per run"
echo
echo "castline $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(ffmpeg -version | head -1 | cut -d' ' -f1-3), $(gst-launch-1.0 --version | sed -n 2p)"
echo
echo "CPU seconds (user+sys of the capturing process) / achieved fps (frames in the file ÷ ${SECS} s) / peak RSS"
echo
echo "| job | castline | ffmpeg | GStreamer | CPU vs ffmpeg | CPU vs GStreamer | RSS vs GStreamer |"
echo "|---|---|---|---|---|---|---|"
row "1080p30-veryfast" 1920 1080 30 veryfast --fps 60
row "1080p30-ultrafast" 1920 1080 30 ultrafast --fps 60
row "1440p60-ultrafast" 2560 1440 60 ultrafast --fps 60
row "1080p30-static" 1920 1080 30 veryfast --static
echo
echo "Conversion micro-benchmark:"
echo
cargo bench -q -p castline --bench convert 2>/dev/null | sed 's/^/    /'
