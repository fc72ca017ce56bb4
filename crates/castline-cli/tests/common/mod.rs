//! Test harness: starts real parts (Xvfb, the testkit content/windows) and reads results back
//! with ffprobe/ffmpeg. Every child process is killed on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const CASTLINE: &str = env!("CARGO_BIN_EXE_castline");
pub const TESTKIT: &str = env!("CARGO_BIN_EXE_castline-testkit");

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A private Xvfb display.
pub struct Xvfb {
    pub display: String,
    _proc: Proc,
}

static NEXT_DISPLAY: AtomicU32 = AtomicU32::new(0);

impl Xvfb {
    pub fn start(width: u32, height: u32) -> Xvfb {
        let base = 200 + (std::process::id() % 400) * 8;
        for _ in 0..40 {
            let n = base + NEXT_DISPLAY.fetch_add(1, Ordering::SeqCst);
            if Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let mut child = Command::new("Xvfb")
                .args([
                    &format!(":{n}"),
                    "-screen",
                    "0",
                    &format!("{width}x{height}x24"),
                    "-nolisten",
                    "tcp",
                    "-noreset",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("Xvfb is installed (apt-get install xvfb)");
            let sock = format!("/tmp/.X11-unix/X{n}");
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if Path::new(&sock).exists() {
                    std::thread::sleep(Duration::from_millis(100));
                    return Xvfb {
                        display: format!(":{n}"),
                        _proc: Proc(child),
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("could not start Xvfb");
    }

    /// Full-screen moving content at `fps`.
    pub fn moving_content(&self, fps: u32) -> Proc {
        let p = Command::new(TESTKIT)
            .args(["content", "--fps", &fps.to_string()])
            .env("DISPLAY", &self.display)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        Proc(p)
    }

    /// Full-screen textured content painted once and never changed (a still screen).
    pub fn static_content(&self) -> Proc {
        let p = Command::new(TESTKIT)
            .args(["content", "--static"])
            .env("DISPLAY", &self.display)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        Proc(p)
    }

    /// A test window; returns the process and the window id.
    pub fn window(&self, extra: &[&str]) -> (Proc, u32) {
        let mut p = Command::new(TESTKIT)
            .arg("window")
            .args(extra)
            .env("DISPLAY", &self.display)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(p.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let id = u32::from_str_radix(line.trim().trim_start_matches("0x"), 16).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        (Proc(p), id)
    }

    /// Kill the X server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self._proc.0.kill();
        let _ = self._proc.0.wait();
    }

    pub fn castline(&self) -> Command {
        let mut c = Command::new(CASTLINE);
        c.env("DISPLAY", &self.display);
        c
    }
}

/// castline without a display.
pub fn castline() -> Command {
    let mut c = Command::new(CASTLINE);
    c.env_remove("DISPLAY");
    c
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("castline runs");
    eprintln!(
        "--- {:?}\nstatus {:?}\nstdout:\n{}\nstderr:\n{}",
        cmd,
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory under the target dir.
pub fn tmpdir(name: &str) -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// ffprobe's view of the first video stream and the format, with decoded frame count.
#[derive(Debug)]
pub struct Probe {
    pub codec: String,
    pub profile: String,
    pub pix_fmt: String,
    pub width: u64,
    pub height: u64,
    pub frames: u64,
    pub duration: f64,
    pub color_space: String,
    pub color_range: String,
}

pub fn probe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-count_frames",
            "-select_streams",
            "v:0",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    assert!(
        out.status.success(),
        "ffprobe failed on {path:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    let str_of = |x: &serde_json::Value| x.as_str().unwrap_or("").to_string();
    Probe {
        codec: str_of(&s["codec_name"]),
        profile: str_of(&s["profile"]),
        pix_fmt: str_of(&s["pix_fmt"]),
        width: s["width"].as_u64().unwrap_or(0),
        height: s["height"].as_u64().unwrap_or(0),
        frames: str_of(&s["nb_read_frames"]).parse().unwrap_or(0),
        duration: str_of(&v["format"]["duration"]).parse().unwrap_or(0.0),
        color_space: str_of(&s["color_space"]),
        color_range: str_of(&s["color_range"]),
    }
}

/// ffprobe `-show_entries ENTRIES` of the first video stream, one CSV line per item.
pub fn probe_entries(path: &Path, entries: &str) -> Vec<String> {
    probe_stream(path, "v:0", entries)
}

/// `ffprobe -show_entries` of the streams `select` picks (`v:0`, `a:0`), one value per line.
pub fn probe_stream(path: &Path, select: &str, entries: &str) -> Vec<String> {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            select,
            "-show_entries",
            entries,
            "-of",
            "csv=p=0",
        ])
        .arg(path)
        .output()
        .expect("ffprobe is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Decode every frame to raw pixels (`pix_fmt` gray or rgb24), with ffmpeg's stderr.
pub fn decode(path: &Path, pix_fmt: &str) -> (Vec<u8>, String) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "rawvideo", "-pix_fmt", pix_fmt, "-"])
        .output()
        .unwrap();
    (
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Number of distinct decoded pictures.
pub fn distinct_frames(path: &Path) -> usize {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args(["-f", "framemd5", "-"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let hashes: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next())
        .map(|h| h.trim())
        .collect();
    hashes.len()
}

/// Top-level MP4 box types in order.
pub fn mp4_boxes(path: &Path) -> Vec<String> {
    let data = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut i = 0usize;
    while i + 8 <= data.len() {
        let mut size = u32::from_be_bytes(data[i..i + 4].try_into().unwrap()) as u64;
        let kind = String::from_utf8_lossy(&data[i + 4..i + 8]).into_owned();
        if size == 1 && i + 16 <= data.len() {
            size = u64::from_be_bytes(data[i + 8..i + 16].try_into().unwrap());
        }
        out.push(kind);
        if size < 8 {
            break;
        }
        i += size as usize;
    }
    out
}

pub fn wait_for_file(path: &Path, min_len: u64, timeout: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if std::fs::metadata(path)
            .map(|m| m.len() >= min_len)
            .unwrap_or(false)
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{path:?} did not reach {min_len} bytes");
}

pub fn kill(child: &Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child.
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
}

/// nginx with the RTMP module on a free loopback port; restartable on the same port.
pub struct Nginx {
    pub port: u16,
    /// rtmps:// port: TLS terminated by nginx's stream module in front of the RTMP port.
    pub tls_port: Option<u16>,
    pub dir: PathBuf,
    proc: Option<Proc>,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Nginx {
    pub fn start() -> Nginx {
        let dir = tmpdir(&format!(
            "nginx-{}",
            NEXT_DISPLAY.fetch_add(1, Ordering::SeqCst)
        ));
        let mut n = Nginx {
            port: free_port(),
            tls_port: None,
            dir,
            proc: None,
        };
        n.restart();
        n
    }

    /// Also serve rtmps:// with a self-signed certificate for 127.0.0.1 (`cert.pem` in `dir`).
    pub fn start_with_tls() -> Nginx {
        let dir = tmpdir(&format!(
            "nginx-{}",
            NEXT_DISPLAY.fetch_add(1, Ordering::SeqCst)
        ));
        let ok = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(ok, "openssl could not make a test certificate");
        let mut n = Nginx {
            port: free_port(),
            tls_port: Some(free_port()),
            dir,
            proc: None,
        };
        n.restart();
        n
    }

    /// (Re)start on the same port. App `live` accepts publishers; app `closed` denies publishing.
    pub fn restart(&mut self) {
        self.stop();
        let tls = match self.tls_port {
            Some(p) => format!(
                "stream {{ server {{ listen 127.0.0.1:{p} ssl; ssl_certificate {dir}/cert.pem;\n\
                 ssl_certificate_key {dir}/key.pem; proxy_pass 127.0.0.1:{port}; }} }}\n",
                dir = self.dir.display(),
                port = self.port
            ),
            None => String::new(),
        };
        let conf = format!(
            "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
             load_module /usr/lib/nginx/modules/ngx_stream_module.so;\n\
             daemon off; master_process off; pid {dir}/nginx.pid; error_log {dir}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             rtmp {{ server {{ listen 127.0.0.1:{port}; access_log off;\n\
               application live {{ live on; }}\n\
               application closed {{ live on; deny publish all; }} }} }}\n{tls}",
            dir = self.dir.display(),
            port = self.port
        );
        std::fs::write(self.dir.join("nginx.conf"), conf).unwrap();
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-e")
            .arg(self.dir.join("error.log"))
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is installed (apt-get install nginx libnginx-mod-rtmp)");
        self.proc = Some(Proc(child));
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "nginx did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        self.proc = None;
    }

    pub fn url(&self, app: &str, key: &str) -> String {
        format!("rtmp://127.0.0.1:{}/{app}/{key}", self.port)
    }
}

/// A TCP relay whose client→server direction can be throttled (bytes per second, 0 = off).
pub struct SlowRelay {
    pub port: u16,
    pub rate: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SlowRelay {
    pub fn start(upstream: u16) -> SlowRelay {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        // Small kernel buffers so the throttle reaches the sender quickly (accepted sockets
        // inherit the receive buffer size).
        let small: libc::c_int = 16 * 1024;
        // SAFETY: setsockopt on our own socket with a valid int.
        unsafe {
            libc::setsockopt(
                listener.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &small as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        let port = listener.local_addr().unwrap().port();
        let rate = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = rate.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                let r = r.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        // Hold the chunk for n/rate seconds, in small steps so lifting the
                        // throttle takes effect at once.
                        let t0 = Instant::now();
                        loop {
                            let rate = r.load(Ordering::Relaxed);
                            if rate == 0 || t0.elapsed().as_secs_f64() >= n as f64 / rate as f64 {
                                break;
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut s_in, &mut c_out);
                    let _ = c_out.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowRelay { port, rate }
    }
}

/// Read a live RTMP stream for `secs` seconds into an FLV file (stream copy), in the background.
pub fn rtmp_reader(url: &str, secs: u32, file: &Path) -> Proc {
    let child = Command::new("ffmpeg")
        .args([
            "-nostdin",
            "-y",
            "-v",
            "error",
            "-rw_timeout",
            "20000000",
            "-analyzeduration",
            "1000000",
        ])
        .args(["-i", url, "-t", &secs.to_string(), "-c", "copy"])
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc(child)
}

/// Read `secs` seconds of a live RTMP stream into `file`, waiting (≤ 15 s) for the reader to end.
pub fn read_live(url: &str, secs: u32, file: &Path) {
    let mut reader = rtmp_reader(url, secs, file);
    wait_proc(&mut reader, Duration::from_secs(15));
}

/// castline in the background with stdout and stderr captured.
pub fn spawn_castline(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait for a background process to end by itself.
pub fn wait_proc(p: &mut Proc, timeout: Duration) {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if let Ok(Some(_)) = p.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stats objects printed by `--stats json`.
pub fn json_stats(stderr: &str) -> Vec<serde_json::Value> {
    stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A private, headless PulseAudio daemon with two null sinks: `speakers` (the default sink; its
/// monitor is "system audio") and `micsink` (its monitor is the default source: a virtual
/// microphone that can be unplugged by unloading its module).
pub struct Pulse {
    pub dir: PathBuf,
    pub server: String,
    /// Module index of `micsink` (for `unplug_mic`).
    pub mic_module: u32,
    _proc: Proc,
}

impl Pulse {
    pub fn start(name: &str) -> Pulse {
        let dir = tmpdir(&format!("pulse-{name}"));
        let sock = dir.join("native");
        let script = dir.join("default.pa");
        std::fs::write(
            &script,
            format!(
                "load-module module-native-protocol-unix auth-anonymous=1 socket={}\n\
                 load-module module-null-sink sink_name=speakers\n\
                 set-default-sink speakers\n",
                sock.display()
            ),
        )
        .unwrap();
        let child = Command::new("pulseaudio")
            .args([
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                "--use-pid-file=no",
                "-F",
            ])
            .arg(&script)
            .env("XDG_RUNTIME_DIR", &dir)
            .env("HOME", &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pulseaudio is installed (apt-get install pulseaudio)");
        let proc = Proc(child);
        let t0 = Instant::now();
        while !sock.exists() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut p = Pulse {
            server: format!("unix:{}", sock.display()),
            dir,
            mic_module: 0,
            _proc: proc,
        };
        let out = p.pactl(&["load-module", "module-null-sink", "sink_name=micsink"]);
        p.mic_module = out.trim().parse().expect("module index");
        p.pactl(&["set-default-source", "micsink.monitor"]);
        p
    }

    /// Kill the sound server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self._proc.0.kill();
        let _ = self._proc.0.wait();
    }

    /// Point a command at this server.
    pub fn env<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("PULSE_SERVER", &self.server)
            .env("XDG_RUNTIME_DIR", &self.dir)
            .env("HOME", &self.dir)
    }

    pub fn pactl(&self, args: &[&str]) -> String {
        let out = self
            .env(&mut Command::new("pactl"))
            .args(args)
            .output()
            .expect("pactl (apt-get install pulseaudio-utils)");
        assert!(out.status.success(), "pactl {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Play a sine of `freq` Hz into `sink` as application `app`, until dropped.
    pub fn tone(&self, freq: u32, app: &str, sink: &str) -> Proc {
        let p = self
            .env(&mut Command::new("ffmpeg"))
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-f",
                "lavfi",
                "-i",
            ])
            .arg(format!("sine=frequency={freq}:sample_rate=48000"))
            .args(["-f", "pulse", "-name", app, "-device", sink, "tone"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        // Until the stream exists on the server.
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self
                .pactl(&["list", "sink-inputs"])
                .contains(&format!("application.name = \"{app}\""))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Proc(p)
    }

    /// Remove the virtual microphone, as if it were unplugged.
    pub fn unplug_mic(&self) {
        self.pactl(&["unload-module", &self.mic_module.to_string()]);
    }
}

/// Decoded audio of a file: interleaved stereo f32 at 48 kHz, and the stream's start time.
pub fn decode_audio(path: &Path) -> (Vec<f32>, f64) {
    let out = Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(path)
        .args([
            "-map", "0:a", "-ac", "2", "-ar", "48000", "-f", "f32le", "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "decode audio: {out:?}");
    let samples = out
        .stdout
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let start = probe_stream(path, "a:0", "stream=start_time")
        .first()
        .and_then(|s| s.trim_end_matches(',').parse().ok())
        .unwrap_or(0.0);
    (samples, start)
}

/// Left channel of interleaved stereo between `from` and `to` seconds.
pub fn window(samples: &[f32], from: f64, to: f64) -> Vec<f32> {
    let a = (from * 48_000.0) as usize;
    let b = ((to * 48_000.0) as usize).min(samples.len() / 2);
    (a..b).map(|i| samples[i * 2]).collect()
}

/// Amplitude of the `freq` component (Goertzel), 1.0 = full-scale sine.
pub fn tone_amplitude(x: &[f32], freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / 48_000.0;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0f64, 0f64);
    for &v in x {
        let s0 = v as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.max(0.0).sqrt() / x.len().max(1) as f64
}

/// The strongest frequency between 100 and 2000 Hz (5 Hz steps).
pub fn dominant_frequency(x: &[f32]) -> f64 {
    (20..=400)
        .map(|k| k as f64 * 5.0)
        .max_by(|a, b| tone_amplitude(x, *a).total_cmp(&tone_amplitude(x, *b)))
        .unwrap()
}

pub fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// `castline serve …` in the background: the viewer URL it printed, its stderr in a file.
pub struct Serve {
    pub url: String,
    pub base: String,
    pub token: String,
    pub log: PathBuf,
    pub proc: Proc,
    /// When the viewer URL was printed: the pipeline clock's zero, within a few ms (stats'
    /// `time_s` counts from there).
    pub started: Instant,
}

impl Serve {
    /// Start `castline serve` with `args` (plus --listen on a free port) and wait for its URL.
    pub fn start(name: &str, cmd: &mut Command, args: &[&str]) -> Serve {
        Self::start_at(name, cmd, &format!("127.0.0.1:{}", free_port()), args)
    }

    /// The same on a given listen address (e.g. inside a network namespace).
    pub fn start_at(name: &str, cmd: &mut Command, listen: &str, args: &[&str]) -> Serve {
        use std::io::BufRead;
        let dir = tmpdir(name);
        let log = dir.join("stderr.log");
        let mut child = cmd
            .args(["serve", "--listen", listen])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Some(u) = line.strip_prefix("castline: viewer URL ") {
                    let _ = tx.send(u.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "castline serve printed no viewer URL; stderr:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let started = Instant::now();
        let token = url.split("token=").nth(1).unwrap().to_string();
        Serve {
            started,
            base: format!("http://{listen}"),
            url,
            token,
            log,
            proc: Proc(child),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGINT, wait for the exit; returns the log.
    pub fn stop(mut self) -> String {
        kill(&self.proc.0, libc::SIGINT);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) {
            if let Ok(Some(_)) = self.proc.0.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.log()
    }
}

/// The browser test driver (tests/browser/peer.mjs: Debian's headless Chromium through
/// playwright-core). Runs the plan's steps and returns one JSON object per step.
pub fn browser(steps: serde_json::Value) -> Vec<serde_json::Value> {
    browser_with(Command::new("node"), steps)
}

/// One HTTP/1.1 request over a plain socket; returns (status, body). Only for tests.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    let mut s = std::net::TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A network namespace with a veth carrying 127.0.0.2 (see shared/interop/janus/README.md).
pub struct Netns(pub String);

impl Netns {
    pub fn create(name: &str) -> Netns {
        let ns = format!("cl-{name}-{}", std::process::id());
        let ip = |args: &[&str]| {
            let s = Command::new("ip")
                .args(args)
                .status()
                .expect("ip (iproute2)");
            assert!(s.success(), "ip {args:?}");
        };
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "link",
            "add",
            "jice",
            "type",
            "veth",
            "peer",
            "name",
            "jice_peer",
        ]);
        ip(&["-n", &ns, "addr", "add", "127.0.0.2/32", "dev", "jice"]);
        ip(&["-n", &ns, "link", "set", "jice", "up"]);
        ip(&["-n", &ns, "link", "set", "jice_peer", "up"]);
        Netns(ns)
    }

    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.0])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The browser test driver run by `node` from `cmd` (e.g. inside a network namespace).
pub fn browser_with(mut cmd: Command, steps: serde_json::Value) -> Vec<serde_json::Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "playwright-core missing: run scripts/setup.sh (npm ci in {})",
        dir.display()
    );
    let plan = serde_json::json!({ "steps": steps }).to_string();
    let out = cmd
        .arg(dir.join("peer.mjs"))
        .arg(&plan)
        .stdin(Stdio::null())
        .output()
        .expect("node runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "--- browser {plan}\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Two network namespaces of the test's own joined by a veth pair: side A (`10.203.0.1`, where
/// castline runs) and side B (`10.203.0.2`, a viewer). `cap` puts a `tbf` qdisc on A's end, so
/// everything A sends to B goes through a link of that rate (see shared/README.md).
pub struct NetPair {
    pub a: String,
    pub b: String,
}

pub const NET_A: &str = "10.203.0.1";
pub const NET_B: &str = "10.203.0.2";

impl NetPair {
    pub fn create(name: &str) -> NetPair {
        let pid = std::process::id();
        let (a, b) = (format!("cl-{name}-a-{pid}"), format!("cl-{name}-b-{pid}"));
        for ns in [&a, &b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
        ]);
        ip(&["-n", &a, "addr", "add", &format!("{NET_A}/24"), "dev", "va"]);
        ip(&["-n", &b, "addr", "add", &format!("{NET_B}/24"), "dev", "vb"]);
        ip(&["-n", &a, "link", "set", "va", "up"]);
        ip(&["-n", &b, "link", "set", "vb", "up"]);
        NetPair { a, b }
    }

    /// `program` run inside namespace `ns` (self.a or self.b).
    pub fn cmd(ns: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, program]);
        c
    }

    /// Cap what A sends to B at `rate` (e.g. "1.5mbit").
    pub fn cap(&self, rate: &str) {
        ip(&[
            "-n", &self.a, "qdisc", "replace", "dev", "va", "root", "tbf", "rate", rate, "burst",
            "20kb", "latency", "100ms",
        ]);
    }

    /// nginx-rtmp listening on NET_B:1935 in namespace B (application `live`), its files in
    /// `dir`; ready when this returns.
    pub fn nginx_rtmp(&self, dir: &Path) -> Proc {
        let conf = dir.join("nginx.conf");
        std::fs::write(
            &conf,
            format!(
                "load_module /usr/lib/nginx/modules/ngx_rtmp_module.so;\n\
                 daemon off; master_process off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
                 events {{ worker_connections 64; }}\n\
                 rtmp {{ server {{ listen {NET_B}:1935; access_log off;\n\
                   application live {{ live on; }} }} }}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        let p = Proc(
            NetPair::cmd(&self.b, "nginx")
                .arg("-p")
                .arg(dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nginx"),
        );
        std::thread::sleep(Duration::from_millis(800));
        p
    }

    pub fn uncap(&self) {
        ip(&["-n", &self.a, "qdisc", "del", "dev", "va", "root"]);
    }
}

/// `ip ARGS` (iproute2; `ip -n NS qdisc …` runs tc's qdisc commands inside a namespace).
fn ip(args: &[&str]) {
    let (prog, args) = match args {
        ["-n", ns, "qdisc", rest @ ..] => (
            "ip",
            [&["netns", "exec", ns, "tc", "qdisc"][..], rest].concat(),
        ),
        _ => ("ip", args.to_vec()),
    };
    let s = Command::new(prog).args(&args).status().expect("iproute2");
    assert!(s.success(), "{prog} {args:?}");
}

impl Drop for NetPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
