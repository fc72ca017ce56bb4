//! `--source ffmpeg:'<input args>'`: an ffmpeg child process encodes with low-latency H.264
//! settings and writes Annex B to its stdout; castline groups the NAL units into access units
//! and passes them through without re-encoding. ffmpeg's stderr goes to the log; when the child
//! exits it is restarted (capped retries with backoff).
//!
//! The end of an access unit is only known when the next one starts (raw H.264 has no
//! framing), so pass-through adds one frame interval of latency.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::encode::{EncoderSettings, H264Profile, VideoStreamInfo};
use crate::error::CaptureError;
use crate::pipeline::clock::MediaClock;
use crate::webrtc::nal_units;

/// Split an argument string the way a POSIX shell would for words: whitespace separates,
/// '…' and "…" quote, backslash escapes.
pub fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x) => cur.push(x),
                            None => return Err("trailing backslash".into()),
                        },
                        Some(x) => cur.push(x),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(x) => cur.push(x),
                    None => return Err("trailing backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// One access unit as read from ffmpeg (Annex B), stamped on arrival.
#[derive(Debug, Clone)]
pub struct AccessUnit {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub arrival_us: i64,
}

/// Groups a byte stream of NAL units into access units (H.264 7.4.1.2.3): an AU ends before an
/// AUD, SPS, PPS, SEI or prefix NAL, or before a slice whose first_mb_in_slice is 0, that follows
/// a slice.
#[derive(Default)]
pub struct AuAssembler {
    pending: Vec<u8>,
    au: Vec<u8>,
    au_has_slice: bool,
    au_keyframe: bool,
}

const START_CODE: [u8; 4] = [0, 0, 0, 1];
/// A NAL unit larger than this means the input is not H.264 Annex B.
const MAX_PENDING: usize = 32 << 20;

impl AuAssembler {
    /// Feed bytes; complete access units are appended to `out` as (data, keyframe).
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<(Vec<u8>, bool)>) -> Result<(), String> {
        self.pending.extend_from_slice(bytes);
        // Every NAL unit but the last is complete (the last may still grow).
        let units: Vec<Vec<u8>> = nal_units(&self.pending).map(|n| n.to_vec()).collect();
        if units.len() < 2 {
            if self.pending.len() > MAX_PENDING {
                return Err("no H.264 start code in 32 MiB of ffmpeg output".into());
            }
            return Ok(());
        }
        for nal in &units[..units.len() - 1] {
            self.add_nal(nal, out);
        }
        // Keep the last (incomplete) unit with its start code.
        let last = &units[units.len() - 1];
        let mut rest = Vec::with_capacity(last.len() + 4);
        rest.extend_from_slice(&START_CODE);
        rest.extend_from_slice(last);
        self.pending = rest;
        Ok(())
    }

    /// End of stream: the last unit is complete now.
    pub fn finish(&mut self, out: &mut Vec<(Vec<u8>, bool)>) {
        let units: Vec<Vec<u8>> = nal_units(&self.pending).map(|n| n.to_vec()).collect();
        for nal in &units {
            self.add_nal(nal, out);
        }
        self.pending.clear();
        self.flush_au(out);
    }

    fn add_nal(&mut self, nal: &[u8], out: &mut Vec<(Vec<u8>, bool)>) {
        let Some(&header) = nal.first() else {
            return;
        };
        let kind = header & 0x1f;
        let is_slice = kind == 1 || kind == 5;
        let starts_au = match kind {
            6..=9 | 14..=18 => true,
            // first_mb_in_slice is ue(v); 0 is the single bit '1'.
            1 | 5 => nal.get(1).is_some_and(|b| b & 0x80 != 0),
            _ => false,
        };
        if starts_au && self.au_has_slice {
            self.flush_au(out);
        }
        self.au.extend_from_slice(&START_CODE);
        self.au.extend_from_slice(nal);
        if is_slice {
            self.au_has_slice = true;
        }
        if kind == 5 {
            self.au_keyframe = true;
        }
    }

    fn flush_au(&mut self, out: &mut Vec<(Vec<u8>, bool)>) {
        if self.au_has_slice {
            out.push((std::mem::take(&mut self.au), self.au_keyframe));
        }
        self.au.clear();
        self.au_has_slice = false;
        self.au_keyframe = false;
    }
}

/// The stream parameters of a keyframe access unit: size, profile and SPS+PPS (Annex B).
pub fn stream_info_of(au: &[u8], fps: u32, bitrate: u64) -> Result<VideoStreamInfo, String> {
    use h264_reader::nal::sps::SeqParameterSet;
    let mut extradata = Vec::new();
    let mut size = None;
    let mut profile = H264Profile::High;
    for nal in nal_units(au) {
        match nal.first().map(|h| h & 0x1f) {
            Some(7) => {
                let rbsp = h264_reader::rbsp::decode_nal(nal).map_err(|e| e.to_string())?;
                let sps = SeqParameterSet::from_bits(h264_reader::rbsp::BitReader::new(&*rbsp))
                    .map_err(|e| format!("bad SPS: {e:?}"))?;
                size = Some(
                    sps.pixel_dimensions()
                        .map_err(|e| format!("bad SPS size: {e:?}"))?,
                );
                profile = match u8::from(sps.profile_idc) {
                    66 => H264Profile::Baseline,
                    77 => H264Profile::Main,
                    _ => H264Profile::High,
                };
                extradata.extend_from_slice(&START_CODE);
                extradata.extend_from_slice(nal);
            }
            Some(8) => {
                extradata.extend_from_slice(&START_CODE);
                extradata.extend_from_slice(nal);
            }
            _ => {}
        }
    }
    let (width, height) = size.ok_or("the first keyframe carries no SPS")?;
    Ok(VideoStreamInfo {
        encoder_name: "ffmpeg process (pass-through)".into(),
        width,
        height,
        fps,
        bitrate,
        extradata,
        profile,
    })
}

/// Counters of the ingest, for stats and tests.
#[derive(Default)]
pub struct IngestCounters {
    pub spawns: AtomicU64,
    pub access_units: AtomicU64,
    /// Access units dropped because the ingest buffer was full.
    pub dropped: AtomicU64,
}

/// A running ffmpeg child and the thread that restarts it.
pub struct FfmpegIngest {
    rx: Receiver<AccessUnit>,
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    thread: Option<JoinHandle<Result<(), CaptureError>>>,
    pub counters: Arc<IngestCounters>,
    pub first: AccessUnit,
    pub info: VideoStreamInfo,
}

/// Access units buffered between ffmpeg and the outputs; beyond it video is dropped up to the
/// next keyframe.
pub const INGEST_BUFFER: usize = 30;
/// Restarts in a row (without a healthy 10 s in between) before giving up.
pub const MAX_RESTARTS: u32 = 5;

fn ffmpeg_command(args: &[String], enc: &EncoderSettings, fps: u32) -> Command {
    let gop = ((enc.keyint_s * fps as f64).round() as u32)
        .max(1)
        .to_string();
    let rate = enc.bitrate.to_string();
    let profile = match enc.profile {
        H264Profile::Baseline => "baseline",
        H264Profile::Main => "main",
        H264Profile::High => "high",
    };
    let mut c = Command::new("ffmpeg");
    c.args(["-hide_banner", "-nostdin", "-loglevel", "warning"])
        .args(args)
        .args(["-an", "-sn", "-dn", "-c:v", "libx264", "-preset"])
        .arg(&enc.preset)
        .args([
            "-tune",
            "zerolatency",
            "-profile:v",
            profile,
            "-pix_fmt",
            "yuv420p",
        ])
        .args([
            "-bf", "0", "-g", &gop, "-b:v", &rate, "-maxrate", &rate, "-bufsize", &rate,
        ])
        // SPS/PPS before every keyframe: a receiver can start at any of them.
        .args(["-x264-params", "repeat-headers=1"])
        .args(["-flush_packets", "1", "-f", "h264", "pipe:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

impl FfmpegIngest {
    /// Spawn ffmpeg and wait for its first keyframe (which gives the stream's parameters).
    pub fn start(
        args: &[String],
        enc: &EncoderSettings,
        fps: u32,
        clock: MediaClock,
    ) -> Result<Self, CaptureError> {
        let (tx, rx) = mpsc::sync_channel(INGEST_BUFFER);
        let stop = Arc::new(AtomicBool::new(false));
        let child = Arc::new(Mutex::new(None));
        let counters = Arc::new(IngestCounters::default());
        let last_stderr = Arc::new(Mutex::new(Vec::<String>::new()));
        let thread = {
            let (args, enc) = (args.to_vec(), enc.clone());
            let (stop, child, counters, last_stderr) = (
                stop.clone(),
                child.clone(),
                counters.clone(),
                last_stderr.clone(),
            );
            std::thread::Builder::new()
                .name("castline-ffmpeg".into())
                .spawn(move || {
                    run_ffmpeg(
                        &args,
                        &enc,
                        fps,
                        clock,
                        &tx,
                        &stop,
                        &child,
                        &counters,
                        &last_stderr,
                    )
                })
                .map_err(|e| CaptureError::FfmpegProcess(e.to_string()))?
        };
        let mut me = Self {
            rx,
            stop,
            child,
            thread: Some(thread),
            counters,
            first: AccessUnit {
                data: Vec::new(),
                keyframe: false,
                arrival_us: 0,
            },
            info: VideoStreamInfo {
                encoder_name: String::new(),
                width: 0,
                height: 0,
                fps,
                bitrate: enc.bitrate,
                extradata: Vec::new(),
                profile: enc.profile,
            },
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match me.rx.recv_timeout(left) {
                Ok(au) if au.keyframe => match stream_info_of(&au.data, fps, enc.bitrate) {
                    Ok(info) => {
                        tracing::info!(
                            width = info.width,
                            height = info.height,
                            profile = info.profile.as_str(),
                            "first_frame_ingested"
                        );
                        me.info = info;
                        me.first = au;
                        return Ok(me);
                    }
                    Err(e) => {
                        me.stop();
                        return Err(CaptureError::FfmpegProcess(e));
                    }
                },
                Ok(_) => continue,
                Err(e) => {
                    let timed_out = e == RecvTimeoutError::Timeout;
                    me.stop();
                    let result = me.thread.take().map(|t| t.join());
                    let tail = last_stderr
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .join("\n");
                    return Err(match result {
                        Some(Ok(Err(e))) => e,
                        _ if timed_out => CaptureError::FfmpegProcess(format!(
                            "no H.264 keyframe from ffmpeg within 15 s{}",
                            if tail.is_empty() {
                                String::new()
                            } else {
                                format!("; ffmpeg said:\n{tail}")
                            }
                        )),
                        _ => {
                            CaptureError::FfmpegProcess(format!("ffmpeg produced nothing:\n{tail}"))
                        }
                    });
                }
            }
        }
    }

    pub fn recv_timeout(&self, t: Duration) -> Result<AccessUnit, RecvTimeoutError> {
        self.rx.recv_timeout(t)
    }

    /// The running child's pid (tests kill it to check restarts).
    pub fn child_pid(&self) -> Option<u32> {
        self.child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.id())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let _ = c.kill();
        }
    }

    /// Stop and join; the error that ended the ingest, if any.
    pub fn finish(mut self) -> Result<(), CaptureError> {
        self.stop();
        // Unblock the reader should it wait on a full buffer.
        while self.rx.try_recv().is_ok() {}
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(CaptureError::FfmpegProcess("ingest thread panicked".into())),
            None => Ok(()),
        }
    }
}

impl Drop for FfmpegIngest {
    fn drop(&mut self) {
        self.stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn run_ffmpeg(
    args: &[String],
    enc: &EncoderSettings,
    fps: u32,
    clock: MediaClock,
    tx: &SyncSender<AccessUnit>,
    stop: &AtomicBool,
    child_slot: &Mutex<Option<Child>>,
    counters: &IngestCounters,
    last_stderr: &Arc<Mutex<Vec<String>>>,
) -> Result<(), CaptureError> {
    let mut restarts = 0u32;
    let mut skip_to_keyframe = false;
    loop {
        let mut child = ffmpeg_command(args, enc, fps)
            .spawn()
            .map_err(|e| CaptureError::FfmpegProcess(format!("cannot run ffmpeg: {e}")))?;
        counters.spawns.fetch_add(1, Ordering::Relaxed);
        tracing::info!(pid = child.id(), restarts, "ffmpeg_spawned");
        let stdout = child.stdout.take();
        if let Some(err) = child.stderr.take() {
            let tail = last_stderr.clone();
            let _ = std::thread::Builder::new()
                .name("castline-ffmpeg-log".into())
                .spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        tracing::warn!(line = %line, "ffmpeg_stderr");
                        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                        t.push(line);
                        if t.len() > 10 {
                            t.remove(0);
                        }
                    }
                });
        }
        *child_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
        let started = Instant::now();
        let mut assembler = AuAssembler::default();
        let mut aus = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut failure = None;
        if let Some(mut out) = stdout {
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                };
                if let Err(e) = assembler.push(&buf[..n], &mut aus) {
                    failure = Some(e);
                    break;
                }
                for (data, keyframe) in aus.drain(..) {
                    if skip_to_keyframe && !keyframe {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    skip_to_keyframe = false;
                    let au = AccessUnit {
                        data,
                        keyframe,
                        arrival_us: clock.now_us(),
                    };
                    counters.access_units.fetch_add(1, Ordering::Relaxed);
                    match tx.try_send(au) {
                        Ok(()) => {}
                        Err(TrySendError::Full(_)) => {
                            counters.dropped.fetch_add(1, Ordering::Relaxed);
                            skip_to_keyframe = true;
                        }
                        Err(TrySendError::Disconnected(_)) => return Ok(()),
                    }
                }
            }
        }
        let status = child_slot
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .map(|mut c| {
                let _ = c.kill();
                c.wait()
            });
        if stop.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Some(e) = failure {
            return Err(CaptureError::FfmpegProcess(e));
        }
        let code = status
            .and_then(|s| s.ok())
            .map(|s| s.to_string())
            .unwrap_or_else(|| "unknown status".into());
        if started.elapsed() > Duration::from_secs(10) {
            restarts = 0;
        }
        restarts += 1;
        if restarts > MAX_RESTARTS {
            tracing::error!(restarts = MAX_RESTARTS, status = %code, "fatal");
            return Err(CaptureError::FfmpegProcess(format!(
                "ffmpeg exited {MAX_RESTARTS} times in a row (last: {code})"
            )));
        }
        let backoff = Duration::from_millis(250 * (1 << (restarts - 1).min(4)));
        tracing::warn!(status = %code, attempt = restarts, backoff_ms = backoff.as_millis() as u64, "ffmpeg_restarting");
        // Frames of the next child only make sense from its first keyframe.
        skip_to_keyframe = true;
        let t = Instant::now();
        while t.elapsed() < backoff {
            if stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_args(r#"-f lavfi -i 'testsrc=size=640x360:rate=30' -vf "scale=1\"2""#).unwrap(),
            vec![
                "-f",
                "lavfi",
                "-i",
                "testsrc=size=640x360:rate=30",
                "-vf",
                "scale=1\"2"
            ]
        );
        assert!(split_args("-i 'open").is_err());
        assert_eq!(split_args("  ").unwrap(), Vec::<String>::new());
    }

    fn nal(header: u8, first_byte: u8) -> Vec<u8> {
        vec![0, 0, 0, 1, header, first_byte, 0x11, 0x22]
    }

    #[test]
    fn groups_nal_units_into_access_units() {
        // AU 1: SPS PPS IDR(2 slices); AU 2: non-IDR; AU 3: AUD + non-IDR.
        let mut stream = Vec::new();
        for n in [
            nal(0x67, 0x42),
            nal(0x68, 0xce),
            nal(0x65, 0x88),
            nal(0x65, 0x21),
            nal(0x41, 0x9a),
            nal(0x09, 0xf0),
            nal(0x41, 0x9b),
        ] {
            stream.extend(n);
        }
        let mut a = AuAssembler::default();
        let mut out = Vec::new();
        // Byte by byte: boundaries never depend on how reads split the stream.
        for b in &stream {
            a.push(&[*b], &mut out).unwrap();
        }
        assert_eq!(out.len(), 2);
        a.finish(&mut out);
        assert_eq!(out.len(), 3);
        assert!(out[0].1 && !out[1].1 && !out[2].1);
        assert_eq!(nal_units(&out[0].0).count(), 4);
        assert_eq!(nal_units(&out[2].0).count(), 2);
    }
}
