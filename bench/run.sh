#!/usr/bin/env bash
# Benchmark: castline vs ffmpeg CLI (x11grab → libx264 → MP4) vs GStreamer (ximagesrc →
# videoconvert → x264enc → mp4mux) capturing the same Xvfb content with the same preset and
# bitrate, one after another in the same run. Reports CPU seconds (user+sys of the capture
# process), achieved fps (frames in the file / seconds) and peak RSS, plus castline's ratios.
#
#   bench/run.sh [SECONDS]          # default 20 s per run; writes bench/out/ and prints a table
#   bench/run.sh 20 >> bench/RESULTS.md
#   BENCH_ONLY=rtmp bench/run.sh    # only the streaming job
#   BENCH_ONLY=audio bench/run.sh   # only the jobs with system audio (a private PulseAudio
#                                   # daemon plays a tone; the player's CPU is not counted)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
SECS=${1:-20}
OUT=bench/out
mkdir -p "$OUT"
cargo build --release -q -p castline-cli
CASTLINE=$PWD/target/release/castline
TESTKIT=$PWD/target/release/castline-testkit

XVFB_PID=""; CONTENT_PID=""; NGINX_PID=""
cleanup() {
  [ -n "$CONTENT_PID$XVFB_PID" ] || return 0
  kill $CONTENT_PID $XVFB_PID 2>/dev/null || true
  wait $CONTENT_PID $XVFB_PID 2>/dev/null || true
  CONTENT_PID=""; XVFB_PID=""
}
trap 'cleanup; kill $NGINX_PID 2>/dev/null || true' EXIT

# nginx-rtmp on loopback, recording every published stream so frames can be counted.
RTMP_PORT=$((20000 + RANDOM % 20000))
NGINX_DIR=$PWD/$OUT/nginx
mkdir -p "$NGINX_DIR/rec"
cat >"$NGINX_DIR/nginx.conf" <<CONF
load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;
daemon off; master_process off; pid $NGINX_DIR/nginx.pid; error_log $NGINX_DIR/error.log;
events { worker_connections 64; }
rtmp { server { listen 127.0.0.1:$RTMP_PORT; access_log off;
  application live { live on; record all; record_path $NGINX_DIR/rec; record_unique off; } } }
CONF
nginx -p "$NGINX_DIR" -e "$NGINX_DIR/error.log" -c "$NGINX_DIR/nginx.conf" &
NGINX_PID=$!
sleep 1

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
  sleep 1 # let nginx close its recording
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
  report "$job" "$c" "$f" "$g"
}

report() { # JOB "cpu rss fps" x3 (castline, ffmpeg, GStreamer)
  local job=$1 c=$2 f=$3 g=$4
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
if [ -z "${BENCH_ONLY:-}" ]; then
  row "1080p30-veryfast" 1920 1080 30 veryfast --fps 60
  row "1080p30-ultrafast" 1920 1080 30 ultrafast --fps 60
  row "1440p60-ultrafast" 2560 1440 60 ultrafast --fps 60
  row "1080p30-static" 1920 1080 30 veryfast --static
fi
row_rtmp() { # JOB W H FPS PRESET CONTENT... : the same capture, streamed to nginx-rtmp
  local job=$1 w=$2 h=$3 fps=$4 preset=$5; shift 5
  start_display "$w" "$h" "$@"
  local n=$((fps * SECS)) url="rtmp://127.0.0.1:$RTMP_PORT/live"
  local c f g
  c=$(measure "$job-castline" "$NGINX_DIR/rec/c.flv" "$CASTLINE" stream "$url/c" \
      --fps "$fps" --preset "$preset" --bitrate 5M --duration "$SECS" --no-cursor --stats off --encoder x264)
  f=$(measure "$job-ffmpeg" "$NGINX_DIR/rec/f.flv" ffmpeg -nostdin -y -loglevel error \
      -f x11grab -framerate "$fps" -video_size "${w}x${h}" -draw_mouse 0 -i "$DISPLAY" -t "$SECS" \
      -c:v libx264 -preset "$preset" -tune zerolatency -b:v 5M -maxrate 5M -bufsize 5M \
      -pix_fmt yuv420p -fps_mode passthrough -f flv "$url/f")
  g=$(measure "$job-gstreamer" "$NGINX_DIR/rec/g.flv" timeout -s INT $((SECS * 3)) gst-launch-1.0 -q -e \
      ximagesrc use-damage=false show-pointer=false num-buffers="$n" \
      ! "video/x-raw,framerate=$fps/1" ! videoconvert ! video/x-raw,format=I420 \
      ! x264enc speed-preset="$preset" tune=zerolatency bitrate=5000 ! h264parse \
      ! flvmux streamable=true ! rtmp2sink location="$url/g")
  report "$job" "$c" "$f" "$g"
}

if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = rtmp ]; then
  echo
  row_rtmp "1080p30-veryfast-rtmp" 1920 1080 30 veryfast --fps 60
fi

# Audio jobs: the same 1080p30 veryfast capture plus the system sound (the default sink's
# monitor) as AAC 128 kb/s, to MP4 and to RTMP. ffmpeg runs with its default settings (what
# users type); GStreamer's AAC encoder here is voaacenc (no avenc_aac in Debian's set).
row_audio() { # JOB TARGET(mp4|rtmp)
  local job=$1 target=$2 w=1920 h=1080 fps=30 preset=veryfast
  start_display "$w" "$h" --fps 60
  local n=$((fps * SECS)) url="rtmp://127.0.0.1:$RTMP_PORT/live"
  local cf ff gf cout fout gsink
  if [ "$target" = mp4 ]; then
    cf="$OUT/$job-castline.mp4"; ff="$OUT/$job-ffmpeg.mp4"; gf="$OUT/$job-gstreamer.mp4"
    cout=(record "$cf"); fout=("$ff"); gsink=(mp4mux name=mux ! filesink location="$gf")
  else
    cf="$NGINX_DIR/rec/ca.flv"; ff="$NGINX_DIR/rec/fa.flv"; gf="$NGINX_DIR/rec/ga.flv"
    cout=(stream "$url/ca"); fout=(-f flv "$url/fa"); gsink=(flvmux name=mux streamable=true ! rtmp2sink location="$url/ga")
  fi
  local c f g
  c=$(measure "$job-castline" "$cf" "$CASTLINE" "${cout[@]}" --audio system \
      --fps "$fps" --preset "$preset" --bitrate 5M --duration "$SECS" --no-cursor --stats off --encoder x264)
  f=$(measure "$job-ffmpeg" "$ff" ffmpeg -nostdin -y -loglevel error \
      -f x11grab -framerate "$fps" -video_size "${w}x${h}" -draw_mouse 0 -i "$DISPLAY" \
      -f pulse -i speakers.monitor -t "$SECS" \
      -c:v libx264 -preset "$preset" -tune zerolatency -b:v 5M -maxrate 5M -bufsize 5M \
      -pix_fmt yuv420p -c:a aac -b:a 128k "${fout[@]}")
  g=$(measure "$job-gstreamer" "$gf" timeout -s INT $((SECS * 3)) gst-launch-1.0 -q -e \
      ximagesrc use-damage=false show-pointer=false num-buffers="$n" \
      ! "video/x-raw,framerate=$fps/1" ! videoconvert ! video/x-raw,format=I420 \
      ! x264enc speed-preset="$preset" tune=zerolatency bitrate=5000 ! h264parse ! queue ! mux. \
      pulsesrc device=speakers.monitor num-buffers=$((SECS * 100)) buffer-time=100000 latency-time=10000 \
      ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=2 \
      ! voaacenc bitrate=128000 ! aacparse ! queue ! mux. "${gsink[@]}")
  report "$job" "$c" "$f" "$g"
}

if [ -z "${BENCH_ONLY:-}" ] || [ "${BENCH_ONLY:-}" = audio ]; then
  PA_DIR=$PWD/$OUT/pulse
  rm -rf "$PA_DIR"; mkdir -p "$PA_DIR"
  printf 'load-module module-native-protocol-unix auth-anonymous=1 socket=%s/native\nload-module module-null-sink sink_name=speakers\nset-default-sink speakers\n' "$PA_DIR" >"$PA_DIR/default.pa"
  XDG_RUNTIME_DIR=$PA_DIR HOME=$PA_DIR pulseaudio -n --daemonize=no --exit-idle-time=-1 \
    --disallow-exit --use-pid-file=no -F "$PA_DIR/default.pa" >/dev/null 2>&1 &
  PA_PID=$!
  export PULSE_SERVER=unix:$PA_DIR/native
  for _ in $(seq 50); do [ -e "$PA_DIR/native" ] && break; sleep 0.1; done
  ffmpeg -nostdin -loglevel error -re -f lavfi -i sine=frequency=440:sample_rate=48000 \
    -f pulse -name tone -device speakers tone &
  TONE_PID=$!
  trap 'cleanup; kill $NGINX_PID $TONE_PID $PA_PID 2>/dev/null || true' EXIT
  sleep 1
  echo
  row_audio "1080p30-veryfast+audio-mp4" mp4
  row_audio "1080p30-veryfast+audio-rtmp" rtmp
fi
echo
echo "Conversion micro-benchmark:"
echo
cargo bench -q -p castline --bench convert 2>/dev/null | sed 's/^/    /'
