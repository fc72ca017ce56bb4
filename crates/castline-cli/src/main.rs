//! `castline`: the command-line front end of the engine.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use castline::capture::{
    parse_audio_sources, pulse, x11, AudioSourceSpec, SourceOptions, SourceSpec,
};
use castline::encode::{EncoderKind, EncoderSettings, H264Profile};
use castline::output::{OutputSpec, RtmpOptions, ServeOptions};
use castline::pipeline::stats::StatsSnapshot;
use castline::pipeline::{AudioConfig, Pipeline, PipelineConfig};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "castline",
    version,
    about = "Capture a screen or window, encode once, record and stream"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List capture targets.
    List {
        #[command(subcommand)]
        what: ListWhat,
    },
    /// Record to an MP4 file (fragmented while recording, finalized on stop).
    Record {
        /// Output file (.mp4 or .mov).
        file: PathBuf,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Stream live over RTMP(S), e.g. rtmp://HOST[:PORT]/APP/KEY (the key is never printed).
    Stream {
        /// rtmp:// or rtmps:// URL.
        url: String,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Serve the stream to browsers over WebRTC: a viewer page with WebSocket signaling, and a
    /// WHEP endpoint at /whep. Prints the viewer URL (with its access token).
    Serve {
        /// Address to listen on (HTTP; WebRTC media uses a UDP port on the same IP).
        /// Default: $HOST:$PORT when set, else 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<String>,
        /// Access token viewers must present; default: a random one per run.
        #[arg(long)]
        token: Option<String>,
        /// Most viewers at once.
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1000))]
        max_viewers: u64,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
    /// Publish over WebRTC to a WHIP endpoint (an SFU or media server), e.g.
    /// https://sfu.example/whip/room, or into a LiveKit room: livekit://HOST:PORT or
    /// livekit+wss://HOST (with --token, or --api-key/--api-secret/--room).
    Publish {
        /// WHIP endpoint URL (http://, https://, or with a whip+ prefix), a LiveKit server
        /// (livekit://, livekit+wss://, ws://, wss://), or plain RTP:
        /// rtp://IP:PORT?video_pt=N&video_ssrc=N[&audio_pt=N&audio_ssrc=N].
        #[arg(required_unless_present = "session")]
        url: Option<String>,
        /// Plain RTP parameters as JSON from a file, or - for stdin:
        /// {"rtp":{"ip","port"},"video":{"payload_type","ssrc"},"audio":{…}}.
        #[arg(long, conflicts_with = "url")]
        session: Option<String>,
        /// Bearer token for the WHIP endpoint (never printed).
        #[arg(long, env = "CASTLINE_WHIP_BEARER", hide_env_values = true)]
        bearer: Option<String>,
        /// LiveKit access token (same as --livekit-token; never printed).
        #[arg(long)]
        token: Option<String>,
        /// Plain RTP: largest datagram in bytes, RTP header included (256–9000; default 1200,
        /// or the target's mtu= / rtp.mtu).
        #[arg(long, value_name = "BYTES")]
        mtu: Option<usize>,
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
}

#[derive(Subcommand)]
enum ListWhat {
    /// RandR monitors of $DISPLAY.
    Displays {
        #[arg(long)]
        json: bool,
    },
    /// Top-level windows of $DISPLAY.
    Windows {
        #[arg(long)]
        json: bool,
    },
    /// PulseAudio sources (microphones, monitors), sinks and applications playing sound.
    Audio {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum StatsMode {
    Text,
    Json,
    Off,
}

/// Options shared by every command that runs a pipeline.
#[derive(Args)]
struct PipelineArgs {
    /// screen, display:N, window:ID or testsrc.
    #[arg(long, default_value = "screen", value_parser = parse_source)]
    source: SourceSpec,
    /// Frames per second (1–240).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    fps: u32,
    /// Video bitrate, e.g. 5M, 2500k or 5000000.
    #[arg(long, default_value = "5M", value_parser = parse_bitrate)]
    bitrate: u64,
    /// x264 preset (ultrafast … veryslow).
    #[arg(long, default_value = "veryfast")]
    preset: String,
    /// H.264 profile: baseline, main or high. Default: high, or baseline when an output goes
    /// to browsers/WebRTC (they cannot decode high).
    #[arg(long, value_parser = parse_profile)]
    profile: Option<H264Profile>,
    /// Keyframe interval in seconds.
    #[arg(long, default_value_t = 2.0, value_parser = parse_keyint)]
    keyint: f64,
    /// Encoded size WxH (even numbers); default: the source's size.
    #[arg(long, value_parser = parse_size)]
    size: Option<(u32, u32)>,
    /// auto (hardware if it opens, else x264), x264, vaapi, nvenc or qsv.
    #[arg(long, default_value = "auto", value_parser = parse_encoder)]
    encoder: EncoderKind,
    /// Do not draw the mouse cursor.
    #[arg(long)]
    no_cursor: bool,
    /// Stop after this many seconds.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// An extra output fed by the same encode (repeatable).
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Zero-hertz: when no output needs a constant frame rate, encode only frames whose content
    /// changed, a few refinements after, then keep-alives at --idle-fps.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    zero_hertz: OnOff,
    /// Keep-alive frames per second of a still picture under zero-hertz (0.1–30).
    #[arg(long, default_value_t = 1.0, value_parser = parse_idle_fps)]
    idle_fps: f64,
    /// Recordings take a variable frame rate (zero-hertz applies to them too); default: constant.
    #[arg(long)]
    vfr: bool,
    /// Stop cleanly (recordings finalized, exit status 4) when the health verdict recommends a
    /// fallback: capture or encode unstable or gone, or every output failing.
    #[arg(long)]
    stop_on_unstable: bool,
    /// Rolling window of the health verdicts, seconds.
    #[arg(long, default_value_t = 30.0)]
    health_window: f64,
    /// Failures (reconnects, restarts, lost sources) in the window that make a stage unstable.
    #[arg(long, default_value_t = 3)]
    health_max_failures: u32,
    /// Per-second statistics on stderr: text (progress line), json (one object per line) or off.
    #[arg(long, value_enum, default_value_t = StatsMode::Text)]
    stats: StatsMode,
    #[command(flatten)]
    audio: AudioArgs,
    #[command(flatten)]
    network: NetworkArgs,
    #[command(flatten)]
    adapt: AdaptArgs,
    #[command(flatten)]
    livekit: LiveKitArgs,
}

/// Access to a LiveKit room (livekit:// outputs). Tokens and secrets are never printed.
#[derive(Args)]
#[command(next_help_heading = "LiveKit")]
struct LiveKitArgs {
    /// A ready access token (the room is in it).
    #[arg(long, env = "CASTLINE_LIVEKIT_TOKEN", hide_env_values = true)]
    livekit_token: Option<String>,
    /// Or make tokens: the API key…
    #[arg(long, env = "LIVEKIT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// …its secret…
    #[arg(long, env = "LIVEKIT_API_SECRET", hide_env_values = true)]
    api_secret: Option<String>,
    /// …the room to join…
    #[arg(long)]
    room: Option<String>,
    /// …and the participant identity (default: castline-HOSTNAME).
    #[arg(long)]
    identity: Option<String>,
}

impl LiveKitArgs {
    fn auth(&self, token: Option<&str>) -> Result<castline::output::livekit::LiveKitAuth, Failure> {
        use castline::output::livekit::LiveKitAuth;
        if let Some(t) = token.or(self.livekit_token.as_deref()) {
            if self.api_key.is_some() && self.room.is_some() {
                return Err(usage(
                    "give either a token or --api-key/--api-secret/--room, not both".into(),
                ));
            }
            return Ok(LiveKitAuth::Token(t.trim().to_string()));
        }
        match (&self.api_key, &self.api_secret, &self.room) {
            (Some(k), Some(s), Some(r)) => Ok(LiveKitAuth::Keys {
                api_key: k.clone(),
                api_secret: s.clone(),
                room: r.clone(),
                identity: self.identity.clone().unwrap_or_else(|| {
                    format!(
                        "castline-{}",
                        std::fs::read_to_string("/etc/hostname")
                            .map(|h| h.trim().to_string())
                            .unwrap_or_else(|_| "host".into())
                    )
                }),
            }),
            (None, None, None) => Err(usage(
                "a livekit:// output needs --token (or CASTLINE_LIVEKIT_TOKEN), or --api-key, --api-secret and --room".into(),
            )),
            _ => Err(usage("making a LiveKit token needs all of --api-key, --api-secret and --room".into())),
        }
    }
}

/// Adaptive quality of live outputs.
#[derive(Args)]
#[command(next_help_heading = "Adaptive quality")]
struct AdaptArgs {
    /// on: each live output's bitrate follows its path (TWCC/REMB, RTCP loss, RTMP buffer) and
    /// congested ones get a lower tier (fps first, then size); off: every output gets --bitrate.
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    adapt: OnOff,
    /// Lowest frame rate the ladder steps down to before it lowers the resolution.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u32).range(1..=240))]
    min_fps: u32,
    /// Lowest video bitrate a live output is asked to take, e.g. 150k.
    #[arg(long, default_value = "150k", value_parser = parse_bitrate)]
    min_bitrate: u64,
    /// Estimate a new WebRTC peer starts from (default: --bitrate).
    #[arg(long, value_parser = parse_bitrate)]
    start_bitrate: Option<u64>,
    /// Lowest height the ladder scales the picture to.
    #[arg(long, default_value_t = 360, value_parser = clap::value_parser!(u32).range(16..=8192))]
    min_height: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

impl AdaptArgs {
    fn config(&self) -> castline::adapt::AdaptConfig {
        castline::adapt::AdaptConfig {
            enabled: self.adapt == OnOff::On,
            min_fps: self.min_fps,
            min_bitrate: self.min_bitrate,
            start_bitrate: self.start_bitrate,
            min_height: self.min_height,
        }
    }
}

/// Audio capture and encoding.
#[derive(Args)]
#[command(next_help_heading = "Audio")]
struct AudioArgs {
    /// none, system (what the machine plays), mic, mic:NAME, both (system + mic), app:NAME or
    /// app:PID (one application only), or several joined by commas. Default: system when a
    /// PulseAudio server is reachable, otherwise none.
    #[arg(long, value_parser = parse_audio)]
    audio: Option<AudioSources>,
    /// Gain of microphone inputs in the mix (1.0 = unchanged).
    #[arg(long, default_value_t = 1.0, value_parser = parse_gain)]
    mic_gain: f32,
    /// Audio bitrate, e.g. 128k; default 128k for AAC (MP4, RTMP), 96k for Opus.
    #[arg(long, value_parser = parse_audio_bitrate)]
    audio_bitrate: Option<u64>,
}

impl AudioArgs {
    fn config(&self) -> AudioConfig {
        let sources = match &self.audio {
            Some(s) => s.0.clone(),
            None if pulse::server_reachable(Duration::from_secs(1)) => {
                vec![AudioSourceSpec::System]
            }
            None => {
                tracing::warn!(
                    "no PulseAudio server reachable: recording without audio (use --audio none to silence this)"
                );
                Vec::new()
            }
        };
        AudioConfig {
            sources,
            mic_gain: self.mic_gain,
            bitrate: self.audio_bitrate,
        }
    }
}

/// The parsed `--audio` list (a newtype so clap takes it as one value).
#[derive(Clone)]
struct AudioSources(Vec<AudioSourceSpec>);

fn parse_audio(s: &str) -> Result<AudioSources, String> {
    parse_audio_sources(s).map(AudioSources)
}

fn parse_gain(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=10.0).contains(&v) => Ok(v),
        _ => Err(format!("invalid gain '{s}' (0–10)")),
    }
}

fn parse_audio_bitrate(s: &str) -> Result<u64, String> {
    let b = parse_bitrate(s)?;
    if !(8_000..=512_000).contains(&b) {
        return Err(format!("audio bitrate '{s}' out of range (8k–512k)"));
    }
    Ok(b)
}

/// Stream buffer and reconnection of network outputs (RTMP).
#[derive(Args)]
#[command(next_help_heading = "Network outputs")]
struct NetworkArgs {
    /// Stream buffer bound in packets; over it, video is dropped until the next keyframe.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    buffer_packets: u64,
    /// Stream buffer bound in milliseconds of media.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    buffer_ms: u64,
    /// First reconnection delay, seconds.
    #[arg(long, default_value_t = 2.0, value_parser = parse_seconds)]
    reconnect_delay: f64,
    /// Each further attempt waits this many times longer.
    #[arg(long, default_value_t = 1.5, value_parser = parse_multiplier)]
    reconnect_multiplier: f64,
    /// Longest wait between attempts, seconds.
    #[arg(long, default_value_t = 30.0, value_parser = parse_seconds)]
    reconnect_max_delay: f64,
    /// Attempts before giving up (0: never reconnect).
    #[arg(long, default_value_t = 20)]
    reconnect_tries: u32,
    /// rtmps:// and livekit+wss://: trust this CA certificate (PEM) instead of the system store.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// rtmps://: do not verify the server certificate (the stream key could be intercepted).
    #[arg(long)]
    insecure_tls: bool,
}

impl NetworkArgs {
    fn rtmp_options(&self) -> RtmpOptions {
        RtmpOptions {
            buffer_packets: self.buffer_packets as usize,
            buffer: Duration::from_millis(self.buffer_ms),
            reconnect_delay: Duration::from_secs_f64(self.reconnect_delay),
            reconnect_multiplier: self.reconnect_multiplier,
            reconnect_max_delay: Duration::from_secs_f64(self.reconnect_max_delay),
            reconnect_tries: self.reconnect_tries,
            tls_verify: !self.insecure_tls,
            tls_ca_file: self.ca_file.clone(),
            ..RtmpOptions::default()
        }
    }
}

fn parse_idle_fps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=30.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "invalid keep-alive rate '{s}' (0.1–30 frames per second)"
        )),
    }
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("invalid seconds '{s}' (0–3600)")),
    }
}

fn parse_multiplier(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (1.0..=10.0).contains(&v) => Ok(v),
        _ => Err(format!("invalid multiplier '{s}' (1–10)")),
    }
}

fn parse_source(s: &str) -> Result<SourceSpec, String> {
    s.parse()
}

fn parse_profile(s: &str) -> Result<H264Profile, String> {
    s.parse()
}

fn parse_encoder(s: &str) -> Result<EncoderKind, String> {
    s.parse()
}

fn parse_bitrate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mul) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000.0),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000.0),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("invalid bitrate '{s}' (e.g. 5M, 2500k)"))?;
    let bps = v * mul;
    if !(10_000.0..=500_000_000.0).contains(&bps) {
        return Err(format!("bitrate '{s}' out of range (10k–500M)"));
    }
    Ok(bps as u64)
}

fn parse_keyint(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 60.0 => Ok(v),
        _ => Err(format!(
            "invalid keyframe interval '{s}' (seconds, 0 < N ≤ 60)"
        )),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e7 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("invalid duration '{s}' (seconds, > 0)")),
    }
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("invalid size '{s}' (expected WxH, e.g. 1280x720)");
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(err)?;
    let (w, h): (u32, u32) = (w.parse().map_err(|_| err())?, h.parse().map_err(|_| err())?);
    if !w.is_multiple_of(2) || !h.is_multiple_of(2) {
        return Err(format!("size '{s}': width and height must be even (4:2:0)"));
    }
    if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) {
        return Err(format!("size '{s}' out of range (16–8192)"));
    }
    Ok((w, h))
}

/// A failure: exit code 2 for bad usage, 1 for everything else.
struct Failure {
    code: u8,
    message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    // One line instead of a backtrace, should a bug ever panic.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("castline: internal error: {info}");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("castline: error: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn init_logging() {
    let filter = std::env::var("CASTLINE_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info,str0m=warn,dimpl=warn,is=warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .compact()
        .try_init();
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::List { what } => list(what),
        Command::Record { file, pipeline } => {
            let primary = file.to_string_lossy().into_owned();
            let primary = primary
                .parse::<OutputSpec>()
                .map_err(|e| usage(e.to_string()))?;
            run_pipeline(primary, pipeline)
        }
        Command::Serve {
            listen,
            token,
            max_viewers,
            pipeline,
        } => {
            let listen = match listen {
                Some(l) => l,
                None => format!(
                    "{}:{}",
                    std::env::var("HOST").unwrap_or_else(|_| "127.0.0.1".into()),
                    std::env::var("PORT").unwrap_or_else(|_| "8080".into())
                ),
            };
            let listen = std::net::ToSocketAddrs::to_socket_addrs(&listen)
                .ok()
                .and_then(|mut a| a.next())
                .ok_or_else(|| usage(format!("invalid listen address '{listen}' (IP:PORT)")))?;
            if let Some(t) = &token {
                if t.len() < 8
                    || !t
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c))
                {
                    return Err(usage(
                        "--token must be at least 8 characters of A-Z a-z 0-9 - _ . ~".into(),
                    ));
                }
            }
            run_pipeline(
                OutputSpec::Serve(ServeOptions {
                    listen,
                    token,
                    max_viewers: max_viewers as usize,
                }),
                pipeline,
            )
        }
        Command::Publish {
            url,
            session,
            bearer,
            token,
            mtu,
            pipeline,
        } => {
            let with_mtu = |t: castline::output::rtp::RtpTarget| match mtu {
                Some(m) => t.with_mtu(m).map_err(|e| usage(e.to_string())),
                None => Ok(t),
            };
            if let Some(src) = session {
                let text = if src == "-" {
                    let mut t = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut t)
                        .map_err(|e| usage(format!("cannot read the session from stdin: {e}")))?;
                    t
                } else {
                    std::fs::read_to_string(&src)
                        .map_err(|e| usage(format!("cannot read session file '{src}': {e}")))?
                };
                let target = castline::output::rtp::RtpTarget::parse_json(&text)
                    .map_err(|e| usage(e.to_string()))?;
                return run_pipeline(OutputSpec::Rtp(with_mtu(target)?), pipeline);
            }
            let url = url.unwrap_or_default();
            let lower = url.to_ascii_lowercase();
            if lower.starts_with("rtp://") {
                let target = castline::output::rtp::RtpTarget::parse_url(&url)
                    .map_err(|e| usage(e.to_string()))?;
                return run_pipeline(OutputSpec::Rtp(with_mtu(target)?), pipeline);
            }
            if mtu.is_some() {
                return Err(usage("--mtu applies to plain RTP targets only".into()));
            }
            if castline::output::livekit::LiveKitTarget::is_livekit_url(&url) {
                let mut t = castline::output::livekit::LiveKitTarget::parse(&url)
                    .map_err(|e| usage(e.to_string()))?;
                t.auth = Some(pipeline.livekit.auth(token.as_deref())?);
                return run_pipeline(OutputSpec::LiveKit(t), pipeline);
            }
            if token.is_some() {
                return Err(usage(
                    "--token is for LiveKit servers; a WHIP endpoint takes --bearer".into(),
                ));
            }
            let whip = lower.starts_with("http://")
                || lower.starts_with("https://")
                || lower.starts_with("whip+");
            if !whip {
                return Err(usage(format!(
                    "'{}' is not a WHIP endpoint (http:// or https:// URL)",
                    castline::output::whip::redact_whip_url(&url)
                )));
            }
            castline::output::whip::parse_whip_url(&url).map_err(|e| usage(e.to_string()))?;
            run_pipeline(OutputSpec::Whip { url, bearer }, pipeline)
        }
        Command::Stream { url, pipeline } => {
            let lower = url.to_ascii_lowercase();
            if !lower.starts_with("rtmp://") && !lower.starts_with("rtmps://") {
                return Err(usage(format!(
                    "'{}' is not an rtmp:// or rtmps:// URL",
                    castline::output::redact_url(&url)
                )));
            }
            let primary = url
                .parse::<OutputSpec>()
                .map_err(|e| usage(e.to_string()))?;
            run_pipeline(primary, pipeline)
        }
    }
}

fn list(what: ListWhat) -> Result<(), Failure> {
    match what {
        ListWhat::Displays { json } => {
            let mons = x11::list_displays()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&mons)?);
            } else {
                for m in mons {
                    println!(
                        "{:>3}  {:<12} {}x{}+{}+{}{}",
                        m.index,
                        m.name,
                        m.width,
                        m.height,
                        m.x,
                        m.y,
                        if m.primary { "  primary" } else { "" }
                    );
                }
            }
        }
        ListWhat::Windows { json } => {
            let wins = x11::list_windows()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&wins)?);
            } else {
                for w in wins {
                    println!(
                        "{:#010x}  {:>6}  {:<16} {}x{}  {}",
                        w.id,
                        w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        w.process_name.as_deref().unwrap_or("-"),
                        w.width,
                        w.height,
                        w.title
                    );
                }
            }
        }
        ListWhat::Audio { json } => {
            let d = pulse::list_audio()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("sources (use with --audio mic:NAME):");
                for s in &d.sources {
                    println!(
                        "  {} {:<40} {}{}",
                        if s.default { "*" } else { " " },
                        s.name,
                        s.description,
                        s.monitor_of
                            .as_ref()
                            .map(|m| format!(" (monitor of {m})"))
                            .unwrap_or_default()
                    );
                }
                println!("sinks (--audio system records the default one):");
                for s in &d.sinks {
                    println!(
                        "  {} {:<40} {}",
                        if s.default { "*" } else { " " },
                        s.name,
                        s.description
                    );
                }
                println!("applications (use with --audio app:NAME or app:PID):");
                for a in &d.applications {
                    println!(
                        "    {:<20} pid {:<8} {:<16} {}",
                        a.name,
                        a.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                        a.binary.as_deref().unwrap_or("-"),
                        a.media.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }
    Ok(())
}

fn usage(message: String) -> Failure {
    Failure { code: 2, message }
}

fn run_pipeline(primary: OutputSpec, a: PipelineArgs) -> Result<(), Failure> {
    let mut outputs = vec![primary];
    for o in &a.outputs {
        outputs.push(o.parse::<OutputSpec>().map_err(|e| usage(e.to_string()))?);
    }
    for o in &mut outputs {
        if let OutputSpec::LiveKit(t) = o {
            if t.auth.is_none() {
                t.auth = Some(a.livekit.auth(None)?);
            }
        }
    }
    let webrtc = outputs.iter().any(|o| o.is_webrtc());
    let profile = match a.profile {
        Some(H264Profile::High) if webrtc => {
            return Err(usage(
                "--profile high: browsers and WebRTC peers cannot decode High profile H.264; use baseline or main".into(),
            ))
        }
        Some(p) => p,
        None if webrtc => H264Profile::Baseline,
        None => H264Profile::High,
    };
    let cfg = PipelineConfig {
        source: a.source,
        source_options: SourceOptions {
            show_cursor: !a.no_cursor,
            ..SourceOptions::default()
        },
        fps: a.fps,
        size: a.size,
        encoder: EncoderSettings {
            kind: a.encoder,
            bitrate: a.bitrate,
            preset: a.preset,
            profile,
            keyint_s: a.keyint,
            ..EncoderSettings::default()
        },
        outputs,
        duration: a.duration,
        rtmp: a.network.rtmp_options(),
        audio: a.audio.config(),
        adapt: a.adapt.config(),
        zero_hertz: (a.zero_hertz == OnOff::On).then_some(castline::cadence::CadenceConfig {
            idle_fps: a.idle_fps,
            ..castline::cadence::CadenceConfig::default()
        }),
        vfr_recordings: a.vfr,
        health: castline::health::HealthConfig {
            window: Duration::from_secs_f64(a.health_window.clamp(1.0, 3600.0)),
            max_failures: a.health_max_failures.max(1),
            stop_on_unstable: a.stop_on_unstable,
            ..castline::health::HealthConfig::default()
        },
        ..PipelineConfig::default()
    };
    let pipeline = Pipeline::start(cfg).map_err(|e| match e {
        castline::Error::Encode(castline::error::EncodeError::InvalidSetting(m)) => usage(m),
        castline::Error::Output(o) if o.is_usage() => usage(o.to_string()),
        e => Failure::from(e),
    })?;
    for e in pipeline.endpoints() {
        // The viewer URL holds the token: it goes to stdout for the user, never to the log.
        println!("castline: viewer URL {e}");
    }
    let _ = std::io::stdout().flush();
    // First Ctrl-C/SIGTERM: graceful stop (files finalized). A second Ctrl-C: exit at once.
    let stop = pipeline.stop_handle();
    let hard = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, hard.clone());
        let _ = signal_hook::flag::register(sig, hard.clone());
        let _ = signal_hook::flag::register(sig, stop.clone());
    }

    let tty = std::io::stderr().is_terminal();
    let mut last = Instant::now();
    let mut fallback = None;
    while !pipeline.is_finished() {
        std::thread::sleep(Duration::from_millis(50));
        // The verdicts are logged as they come; the CLI only remembers a fallback.
        for e in pipeline.take_health_events() {
            if let castline::health::HealthEvent::FallbackRecommended { stage, reason } = e {
                fallback = Some(format!("{stage}: {reason}"));
            }
        }
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            print_stats(a.stats, tty, &pipeline.sample_stats());
        }
    }
    if a.stats == StatsMode::Text && tty {
        eprintln!();
    }
    let interrupted = stop.load(Ordering::SeqCst);
    let summary = pipeline.wait()?;
    for o in &summary.outputs {
        match o {
            Ok(s) => {
                println!(
                    "castline: wrote {} ({} frames, {:.1} s, {:.2} MB{})",
                    s.name,
                    s.packets,
                    s.packets as f64 / summary.stream.fps as f64,
                    s.bytes as f64 / 1e6,
                    if interrupted {
                        ", stopped by signal"
                    } else {
                        ""
                    }
                );
                if let Some(w) = &s.warning {
                    eprintln!("castline: warning: {}: {w}", s.name);
                }
            }
            Err(e) => eprintln!("castline: error: {e}"),
        }
    }
    if let Some(Err(e)) = summary.outputs.first() {
        // The primary output failed while others carried on: the run still failed.
        return Err(Failure::from(e));
    }
    if let Some(why) = fallback.filter(|_| a.stop_on_unstable) {
        return Err(Failure {
            code: 4,
            message: format!("stopped on an unstable run ({why})"),
        });
    }
    Ok(())
}

fn print_stats(mode: StatsMode, tty: bool, s: &StatsSnapshot) {
    let mut err = std::io::stderr().lock();
    match mode {
        StatsMode::Off => {}
        StatsMode::Json => {
            if let Ok(line) = serde_json::to_string(s) {
                let _ = writeln!(err, "{line}");
            }
        }
        StatsMode::Text => {
            let t = s.time_s;
            let line = format!(
                "frame={:>6} fps={:>5.1} enc={:>5.1}ms p95={:>5.1}ms bitrate={:>7.1}kbit/s queue={} drop={}/{}/{} time={:02}:{:02}:{:05.2}",
                s.frames_encoded,
                s.encoded_fps,
                s.encode_ms_avg,
                s.encode_ms_p95,
                s.bitrate_kbps,
                s.queues.raw,
                s.drops.capture,
                s.drops.encode_queue,
                s.drops.output,
                (t / 3600.0) as u64,
                ((t / 60.0) as u64) % 60,
                t % 60.0
            );
            let _ = if tty {
                write!(err, "\r{line}")
            } else {
                writeln!(err, "{line}")
            };
        }
    }
}
