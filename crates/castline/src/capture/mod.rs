//! Sources. Video: a source is asked for the current picture once per frame tick by the capture
//! thread (see `pipeline`), and answers with a new BGRA picture or "unchanged" — the pipeline then
//! repeats the previous frame, which keeps the output at a constant frame rate for almost no cost.

//!
//! Audio: backends (PulseAudio today) capture continuously on their own threads into the mixer's
//! lanes (see `mix`); [`AudioSourceSpec`] names what to capture.

pub mod ffmpeg_process;
pub mod pulse;
pub mod testsrc;
pub mod x11;
pub mod x11_screen;
pub mod x11_window;

use std::sync::Arc;

use crate::error::CaptureError;

/// Pixel memory a frame points at: heap memory or a shared-memory segment the X server wrote.
pub trait PixelStore: Send + Sync {
    fn bytes(&self) -> &[u8];
}

impl PixelStore for Vec<u8> {
    fn bytes(&self) -> &[u8] {
        self
    }
}

/// A captured BGRA picture (byte order B, G, R, A/X; alpha ignored).
#[derive(Clone)]
pub struct Picture {
    pub width: u32,
    pub height: u32,
    /// Bytes per row.
    pub stride: usize,
    pub pixels: Arc<dyn PixelStore>,
}

/// A picture stamped on the pipeline clock. Repeated frames share `content_id` and pixels.
#[derive(Clone)]
pub struct VideoFrame {
    pub picture: Picture,
    /// Capture time on the pipeline clock (µs since start), the frame's presentation time.
    pub pts_us: i64,
    pub content_id: u64,
}

/// Everything a source needs to know about the moment it captures.
#[derive(Debug, Clone, Copy)]
pub struct CaptureTime {
    /// Pipeline clock, µs since start.
    pub pts_us: i64,
    /// The same instant as UNIX time in µs.
    pub wall_us: u64,
    /// Frame tick index.
    pub tick: u64,
}

pub trait VideoSource: Send {
    /// Human-readable description for logs ("screen :99 1920x1080").
    fn describe(&self) -> String;
    /// The size the source currently produces.
    fn size(&self) -> (u32, u32);
    /// Capture the current picture; `Ok(None)` when nothing changed since the last picture.
    fn grab(&mut self, at: CaptureTime) -> Result<Option<Picture>, CaptureError>;
}

/// Which source to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceSpec {
    /// The whole X screen of `$DISPLAY`.
    Screen,
    /// One RandR monitor by index.
    Display(usize),
    /// One window by X id.
    Window(u32),
    /// The synthetic test picture.
    TestSrc,
    /// The same with fresh noise in every frame (`testsrc:noise`): content that takes every bit
    /// of any bitrate, as a busy screen does (network tests).
    TestSrcNoise,
    /// An ffmpeg child process given these input arguments; its H.264 is passed through
    /// without re-encoding.
    FfmpegProcess(Vec<String>),
}

impl std::str::FromStr for SourceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "screen" => Ok(Self::Screen),
            "testsrc" => Ok(Self::TestSrc),
            "testsrc:noise" => Ok(Self::TestSrcNoise),
            _ => {
                if let Some(n) = s.strip_prefix("display:") {
                    n.parse()
                        .map(Self::Display)
                        .map_err(|_| format!("invalid display index '{n}' in '{s}'"))
                } else if let Some(args) = s.strip_prefix("ffmpeg:") {
                    let args = ffmpeg_process::split_args(args)
                        .map_err(|e| format!("invalid ffmpeg arguments in '{s}': {e}"))?;
                    if args.is_empty() {
                        return Err(
                            "ffmpeg: needs input arguments, e.g. ffmpeg:'-f lavfi -i testsrc'"
                                .into(),
                        );
                    }
                    Ok(Self::FfmpegProcess(args))
                } else if let Some(id) = s.strip_prefix("window:") {
                    parse_window_id(id)
                        .map(Self::Window)
                        .ok_or_else(|| format!("invalid window id '{id}' (decimal or 0x-hex)"))
                } else {
                    Err(format!(
                        "unknown source '{s}' (expected screen, display:N, window:ID, testsrc, testsrc:noise or ffmpeg:'ARGS')"
                    ))
                }
            }
        }
    }
}

/// Which audio to capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AudioSourceSpec {
    /// Everything the machine plays (the default sink's monitor).
    System,
    /// The default source, or the named one.
    Mic(Option<String>),
    /// Only one application's streams.
    App(AppMatch),
    /// Every application's streams except this one's and its children's (a call app sharing
    /// system audio without sending the call back).
    SystemExcept(AppMatch),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppMatch {
    /// `application.name` or the process binary, case-insensitive.
    Name(String),
    Pid(u32),
}

impl std::fmt::Display for AppMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Name(n) => write!(f, "{n}"),
            Self::Pid(p) => write!(f, "{p}"),
        }
    }
}

impl std::fmt::Display for AudioSourceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::System => write!(f, "system"),
            Self::Mic(None) => write!(f, "mic"),
            Self::Mic(Some(n)) => write!(f, "mic:{n}"),
            Self::App(m) => write!(f, "app:{m}"),
            Self::SystemExcept(m) => write!(f, "system-except:{m}"),
        }
    }
}

/// Parse an `--audio` value: `none`, `system`, `mic`, `mic:NAME`, `both` (system + mic),
/// `app:NAME`, `app:PID`, `system-except:PID|NAME`, or several joined with commas.
pub fn parse_audio_sources(s: &str) -> Result<Vec<AudioSourceSpec>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        match part {
            "none" if s.trim() == "none" => {}
            "system" => out.push(AudioSourceSpec::System),
            "mic" => out.push(AudioSourceSpec::Mic(None)),
            "both" => {
                out.push(AudioSourceSpec::System);
                out.push(AudioSourceSpec::Mic(None));
            }
            _ => {
                if let Some(n) = part.strip_prefix("mic:").filter(|n| !n.is_empty()) {
                    out.push(AudioSourceSpec::Mic(Some(n.to_string())));
                } else if let Some(a) = part.strip_prefix("app:").filter(|a| !a.is_empty()) {
                    out.push(AudioSourceSpec::App(app_match(a)));
                } else if let Some(a) = part
                    .strip_prefix("system-except:")
                    .filter(|a| !a.is_empty())
                {
                    out.push(AudioSourceSpec::SystemExcept(app_match(a)));
                } else {
                    return Err(format!(
                        "unknown audio source '{part}' (expected none, system, mic, mic:NAME, both, app:NAME, app:PID or system-except:PID|NAME)"
                    ));
                }
            }
        }
    }
    out.dedup();
    Ok(out)
}

fn app_match(a: &str) -> AppMatch {
    match a.parse() {
        Ok(pid) => AppMatch::Pid(pid),
        Err(_) => AppMatch::Name(a.to_string()),
    }
}

fn parse_window_id(s: &str) -> Option<u32> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Options every source understands.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub show_cursor: bool,
    /// Size of the synthetic picture (real sources have their own size).
    pub testsrc_size: (u32, u32),
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            show_cursor: true,
            testsrc_size: (1280, 720),
        }
    }
}

/// Open the source named by `spec`.
pub fn open_source(
    spec: &SourceSpec,
    opts: &SourceOptions,
) -> Result<Box<dyn VideoSource>, CaptureError> {
    Ok(match spec {
        SourceSpec::TestSrc => Box::new(testsrc::TestSource::new(
            opts.testsrc_size.0,
            opts.testsrc_size.1,
        )?),
        SourceSpec::TestSrcNoise => Box::new(
            testsrc::TestSource::new(opts.testsrc_size.0, opts.testsrc_size.1)?.with_noise(),
        ),
        SourceSpec::Screen => Box::new(x11_screen::ScreenSource::open(None, opts.show_cursor)?),
        SourceSpec::Display(i) => {
            Box::new(x11_screen::ScreenSource::open(Some(*i), opts.show_cursor)?)
        }
        SourceSpec::Window(id) => Box::new(x11_window::WindowSource::open(*id, opts.show_cursor)?),
        SourceSpec::FfmpegProcess(_) => {
            return Err(CaptureError::FfmpegProcess(
                "an ffmpeg source delivers encoded video, not pictures".into(),
            ))
        }
    })
}

/// Reuses pixel buffers once no frame in flight points at them any more.
///
/// `take` hands out a buffer nobody else holds (so `Arc::get_mut` succeeds on it); after filling
/// it, `keep` registers it again so it can be reused once the frames using it are gone.
pub(crate) struct BufferPool<T> {
    buffers: Vec<Arc<T>>,
    max: usize,
}

impl<T> BufferPool<T> {
    pub fn new(max: usize) -> Self {
        Self {
            buffers: Vec::new(),
            max,
        }
    }

    /// A unique buffer: a free one that `fits`, or a new one from `make`.
    pub fn take(
        &mut self,
        fits: impl Fn(&T) -> bool,
        make: impl FnOnce() -> Result<T, CaptureError>,
    ) -> Result<Arc<T>, CaptureError> {
        // Free buffers of a stale size are dropped here.
        self.buffers.retain(|b| Arc::strong_count(b) > 1 || fits(b));
        match self.buffers.iter().position(|b| Arc::strong_count(b) == 1) {
            Some(i) => Ok(self.buffers.swap_remove(i)),
            None => Ok(Arc::new(make()?)),
        }
    }

    pub fn keep(&mut self, b: &Arc<T>) {
        if self.buffers.len() < self.max {
            self.buffers.push(b.clone());
        }
    }

    pub fn clear(&mut self) {
        self.buffers.clear();
    }
}

/// Mutable access to a buffer fresh from [`BufferPool::take`].
pub(crate) fn unique_mut<T>(b: &mut Arc<T>) -> Result<&mut T, CaptureError> {
    Arc::get_mut(b).ok_or_else(|| CaptureError::X11("frame buffer still shared".into()))
}

#[cfg(test)]
mod audio_spec_tests {
    use super::*;

    #[test]
    fn audio_sources_parse_with_system_except() {
        assert_eq!(
            parse_audio_sources("system-except:4242,mic").unwrap(),
            vec![
                AudioSourceSpec::SystemExcept(AppMatch::Pid(4242)),
                AudioSourceSpec::Mic(None)
            ]
        );
        assert_eq!(
            parse_audio_sources("system-except:Discord").unwrap(),
            vec![AudioSourceSpec::SystemExcept(AppMatch::Name(
                "Discord".into()
            ))]
        );
        assert!(parse_audio_sources("system-except:").is_err());
        assert_eq!(
            AudioSourceSpec::SystemExcept(AppMatch::Pid(7)).to_string(),
            "system-except:7"
        );
    }
}
