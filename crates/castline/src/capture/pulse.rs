//! Audio capture through PulseAudio's native protocol (also PipeWire desktops, through
//! pipewire-pulse).
//!
//! * `system`: the default sink's monitor source: everything the machine plays.
//! * `mic`: the default source, or a named one.
//! * `app:NAME` / `app:PID`: only one application: a record stream per matching sink input,
//!   each attached to that sink input alone (`pa_stream_set_monitor_stream`). Streams the
//!   application opens later are picked up; ones it closes go away.
//! * `system-except:PID` / `system-except:NAME`: everything the machine plays except one
//!   application and its child processes: a record stream per *other* sink input, picked up and
//!   dropped the same way (the excluded app may start playing after the share began).
//!
//! Each input runs its own thread with its own (non-threaded) PulseAudio main loop. Streams ask
//! for 48 kHz stereo float, so the server converts and resamples, and for 10 ms fragments (the
//! default would be ~650 ms of capture latency). Chunks are stamped with their arrival time (the
//! last sample of a 10 ms fragment was captured about now) and written into the mixer's lanes,
//! which keep them sample-contiguous and follow clock drift. (PulseAudio's own latency reports,
//! as FFmpeg's pulse input uses them, swing by hundreds of milliseconds for the first second of a
//! monitor stream; measured, arrival time was the steadier clock.)
//!
//! A stream that fails (device unplugged, server restarted) marks its lane not live: the mixer
//! fills silence. The thread keeps trying to reopen the same device (never a different one: a
//! replaced default microphone is not the one the user chose).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use libpulse_binding as pa;
use pa::callbacks::ListResult;
use pa::context::{Context, FlagSet as ContextFlags, State as ContextState};
use pa::def::BufferAttr;
use pa::mainloop::standard::Mainloop;
use pa::proplist::{properties, Proplist};
use pa::sample::{Format, Spec};
use pa::stream::{FlagSet as StreamFlags, PeekResult, State as StreamState, Stream};
use pa::time::MicroSeconds;

use super::{AppMatch, AudioSourceSpec};
use crate::error::CaptureError;
use crate::mix::{self, AudioInput, Lane};
use crate::pipeline::clock::MediaClock;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Record fragment: how much audio the server sends at once, and so the capture latency.
const FRAGMENT: Duration = Duration::from_millis(10);
/// How often a lost device is looked for again, and an application's streams re-listed.
const RESCAN: Duration = Duration::from_millis(500);

/// The server `PULSE_SERVER` names, for messages.
fn server_label() -> String {
    std::env::var("PULSE_SERVER")
        .map(|s| format!(" '{s}'"))
        .unwrap_or_default()
}

fn audio_err(e: impl std::fmt::Display) -> CaptureError {
    CaptureError::Audio(e.to_string())
}

/// A connected context with its own main loop, driven from the current thread. (Field order is
/// drop order: the context must go before its main loop; streams before both.)
struct Connection {
    context: Context,
    mainloop: Mainloop,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.context.disconnect();
    }
}

impl Connection {
    fn open(timeout: Duration) -> Result<Self, CaptureError> {
        let unreachable = |reason: String| CaptureError::AudioServerUnreachable {
            server: server_label(),
            reason,
        };
        let mainloop = Mainloop::new().ok_or_else(|| unreachable("no main loop".into()))?;
        let mut props = Proplist::new().ok_or_else(|| unreachable("no proplist".into()))?;
        let _ = props.set_str(properties::APPLICATION_NAME, "castline");
        let mut context = Context::new_with_proplist(&mainloop, "castline", &props)
            .ok_or_else(|| unreachable("cannot create a context".into()))?;
        context
            .connect(None, ContextFlags::NOAUTOSPAWN, None)
            .map_err(|e| unreachable(e.to_string().unwrap_or_default()))?;
        let mut conn = Self { context, mainloop };
        let deadline = Instant::now() + timeout;
        loop {
            match conn.context.get_state() {
                ContextState::Ready => return Ok(conn),
                ContextState::Failed | ContextState::Terminated => {
                    let e = conn.context.errno();
                    return Err(unreachable(
                        e.to_string().unwrap_or_else(|| "connection failed".into()),
                    ));
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    timeout.as_secs()
                )));
            }
            conn.step(Duration::from_millis(50))?;
        }
    }

    /// Run the main loop once, blocking at most `max`.
    fn step(&mut self, max: Duration) -> Result<(), CaptureError> {
        let ml = &mut self.mainloop;
        ml.prepare(Some(MicroSeconds(max.as_micros() as u64)))
            .map_err(|e| audio_err(e.to_string().unwrap_or_default()))?;
        ml.poll()
            .map_err(|e| audio_err(e.to_string().unwrap_or_default()))?;
        ml.dispatch()
            .map_err(|e| audio_err(e.to_string().unwrap_or_default()))?;
        Ok(())
    }

    fn alive(&self) -> bool {
        self.context.get_state() == ContextState::Ready
    }

    /// Run an introspection query to completion.
    fn query<T: 'static, O: ?Sized>(
        &mut self,
        start: impl FnOnce(&Context, Rc<RefCell<Vec<T>>>) -> pa::operation::Operation<O>,
    ) -> Result<Vec<T>, CaptureError> {
        let out = Rc::new(RefCell::new(Vec::new()));
        let op = start(&self.context, out.clone());
        let deadline = Instant::now() + CONNECT_TIMEOUT;
        while op.get_state() == pa::operation::State::Running {
            if !self.alive() || Instant::now() >= deadline {
                return Err(audio_err("the sound server stopped answering"));
            }
            self.step(Duration::from_millis(50))?;
        }
        drop(op);
        let v = out.take();
        Ok(v)
    }

    fn server(&mut self) -> Result<(Option<String>, Option<String>), CaptureError> {
        let v = self.query(|c, out| {
            c.introspect().get_server_info(move |i| {
                out.borrow_mut().push((
                    i.default_sink_name.as_ref().map(|s| s.to_string()),
                    i.default_source_name.as_ref().map(|s| s.to_string()),
                ))
            })
        })?;
        v.into_iter()
            .next()
            .ok_or_else(|| audio_err("no server information"))
    }

    fn sources(&mut self) -> Result<Vec<(String, String, Option<String>)>, CaptureError> {
        self.query(|c, out| {
            c.introspect().get_source_info_list(move |r| {
                if let ListResult::Item(i) = r {
                    out.borrow_mut().push((
                        i.name.as_deref().unwrap_or_default().to_string(),
                        i.description.as_deref().unwrap_or_default().to_string(),
                        i.monitor_of_sink_name.as_ref().map(|s| s.to_string()),
                    ))
                }
            })
        })
    }

    fn sinks(&mut self) -> Result<Vec<(u32, String, String, String)>, CaptureError> {
        self.query(|c, out| {
            c.introspect().get_sink_info_list(move |r| {
                if let ListResult::Item(i) = r {
                    out.borrow_mut().push((
                        i.index,
                        i.name.as_deref().unwrap_or_default().to_string(),
                        i.description.as_deref().unwrap_or_default().to_string(),
                        i.monitor_source_name
                            .as_deref()
                            .unwrap_or_default()
                            .to_string(),
                    ))
                }
            })
        })
    }

    fn sink_inputs(&mut self) -> Result<Vec<AudioApp>, CaptureError> {
        self.query(|c, out| {
            c.introspect().get_sink_input_info_list(move |r| {
                if let ListResult::Item(i) = r {
                    let p = &i.proplist;
                    out.borrow_mut().push(AudioApp {
                        sink_input: i.index,
                        name: p.get_str(properties::APPLICATION_NAME).unwrap_or_default(),
                        pid: p
                            .get_str(properties::APPLICATION_PROCESS_ID)
                            .and_then(|s| s.parse().ok()),
                        binary: p.get_str(properties::APPLICATION_PROCESS_BINARY),
                        media: i.name.as_ref().map(|s| s.to_string()),
                        sink_index: i.sink,
                        sink: String::new(),
                    })
                }
            })
        })
    }
}

/// A source (microphone or monitor) the server offers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AudioSourceInfo {
    pub name: String,
    pub description: String,
    pub default: bool,
    /// For monitor sources: the sink whose output it carries.
    pub monitor_of: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct AudioSinkInfo {
    pub name: String,
    pub description: String,
    pub default: bool,
    /// The source to record to capture what this sink plays.
    pub monitor: String,
}

/// A stream an application is playing (a sink input).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AudioApp {
    pub sink_input: u32,
    /// `application.name`
    pub name: String,
    pub pid: Option<u32>,
    pub binary: Option<String>,
    /// The stream's own name (`media.name`).
    pub media: Option<String>,
    pub sink: String,
    #[serde(skip)]
    sink_index: u32,
}

impl AudioApp {
    fn matches(&self, m: &AppMatch) -> bool {
        match m {
            AppMatch::Pid(pid) => self.pid == Some(*pid),
            AppMatch::Name(n) => {
                self.name.eq_ignore_ascii_case(n)
                    || self
                        .binary
                        .as_deref()
                        .is_some_and(|b| b.eq_ignore_ascii_case(n))
            }
        }
    }
}

/// What `castline list audio` shows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AudioDevices {
    pub sources: Vec<AudioSourceInfo>,
    pub sinks: Vec<AudioSinkInfo>,
    pub applications: Vec<AudioApp>,
}

fn list_with(conn: &mut Connection) -> Result<AudioDevices, CaptureError> {
    let (default_sink, default_source) = conn.server()?;
    let sinks: Vec<_> = conn
        .sinks()?
        .into_iter()
        .map(|(index, name, description, monitor)| {
            (
                index,
                AudioSinkInfo {
                    default: default_sink.as_deref() == Some(name.as_str()),
                    name,
                    description,
                    monitor,
                },
            )
        })
        .collect();
    let sources = conn
        .sources()?
        .into_iter()
        .map(|(name, description, monitor_of)| AudioSourceInfo {
            default: default_source.as_deref() == Some(name.as_str()),
            name,
            description,
            monitor_of,
        })
        .collect();
    let mut applications = conn.sink_inputs()?;
    for a in &mut applications {
        if let Some((_, s)) = sinks.iter().find(|(i, _)| *i == a.sink_index) {
            a.sink = s.name.clone();
        }
    }
    Ok(AudioDevices {
        sources,
        sinks: sinks.into_iter().map(|(_, s)| s).collect(),
        applications,
    })
}

/// Sources, sinks and playing applications of the PulseAudio server.
pub fn list_audio() -> Result<AudioDevices, CaptureError> {
    list_with(&mut Connection::open(CONNECT_TIMEOUT)?)
}

/// Whether a PulseAudio server answers (decides the CLI's default audio mode).
pub fn server_reachable(timeout: Duration) -> bool {
    Connection::open(timeout).is_ok()
}

/// What one input thread records: a fixed device, an application's streams, or every stream
/// but an application's.
#[derive(Debug, Clone)]
enum Target {
    Device(String),
    App(AppMatch),
    AllExcept(AppMatch),
}

impl Target {
    /// Whether a stream an application plays is one this input records (None: device input).
    fn takes(&self, a: &AudioApp) -> bool {
        match self {
            Target::Device(_) => false,
            Target::App(m) => a.matches(m),
            Target::AllExcept(m) => !a.matches(m) && !a.pid.is_some_and(|p| descends_from(p, m)),
        }
    }
}

/// Whether process `pid` is a child (at any depth) of the process `m` names, read from /proc:
/// a call app's audio often plays from a helper process it started.
fn descends_from(pid: u32, m: &AppMatch) -> bool {
    let mut p = pid;
    // A bounded walk: process trees are shallow, and /proc may change under it.
    for _ in 0..64 {
        let Some(parent) = parent_pid(p) else {
            return false;
        };
        if parent <= 1 {
            return false;
        }
        let hit = match m {
            AppMatch::Pid(x) => parent == *x,
            AppMatch::Name(n) => std::fs::read_to_string(format!("/proc/{parent}/comm"))
                .is_ok_and(|c| c.trim().eq_ignore_ascii_case(n)),
        };
        if hit {
            return true;
        }
        p = parent;
    }
    false
}

/// The parent of `pid` from `/proc/PID/stat` (its 4th field, after the parenthesised name, which
/// may itself hold spaces and parentheses).
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// A running capture of one [`AudioSourceSpec`]; stops when dropped.
pub struct PulseInput {
    pub input: Arc<AudioInput>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl PulseInput {
    /// Resolve the source on the server (an unknown device or application is an error here,
    /// before anything starts), then start capturing into a new [`AudioInput`].
    pub fn open(
        spec: &AudioSourceSpec,
        gain: f32,
        clock: MediaClock,
    ) -> Result<Self, CaptureError> {
        let mut conn = Connection::open(CONNECT_TIMEOUT)?;
        let devices = list_with(&mut conn)?;
        let target = match spec {
            AudioSourceSpec::System => {
                let sink = devices
                    .sinks
                    .iter()
                    .find(|s| s.default)
                    .or(devices.sinks.first())
                    .ok_or_else(|| CaptureError::UnknownAudioSource {
                        name: "system (default sink monitor)".into(),
                        available: "no sinks".into(),
                    })?;
                Target::Device(sink.monitor.clone())
            }
            AudioSourceSpec::Mic(name) => {
                let found = devices.sources.iter().find(|s| match name {
                    Some(n) => &s.name == n,
                    None => s.default,
                });
                match found {
                    Some(s) => Target::Device(s.name.clone()),
                    None => {
                        return Err(CaptureError::UnknownAudioSource {
                            name: name.clone().unwrap_or_else(|| "default source".into()),
                            available: join_or_none(devices.sources.iter().map(|s| &s.name)),
                        })
                    }
                }
            }
            AudioSourceSpec::App(m) => {
                let clients = conn.query(|c, out| {
                    c.introspect().get_client_info_list(move |r| {
                        if let ListResult::Item(i) = r {
                            let p = &i.proplist;
                            out.borrow_mut().push(AudioApp {
                                sink_input: 0,
                                name: p.get_str(properties::APPLICATION_NAME).unwrap_or_default(),
                                pid: p
                                    .get_str(properties::APPLICATION_PROCESS_ID)
                                    .and_then(|s| s.parse().ok()),
                                binary: p.get_str(properties::APPLICATION_PROCESS_BINARY),
                                media: None,
                                sink_index: 0,
                                sink: String::new(),
                            })
                        }
                    })
                })?;
                if !clients.iter().any(|c| c.matches(m)) {
                    return Err(CaptureError::UnknownAudioApp {
                        app: m.to_string(),
                        available: join_or_none(
                            devices
                                .applications
                                .iter()
                                .map(|a| format!("{} (pid {})", a.name, opt(a.pid))),
                        ),
                    });
                }
                Target::App(m.clone())
            }
            // The excluded app need not be playing (or even running) yet.
            AudioSourceSpec::SystemExcept(m) => Target::AllExcept(m.clone()),
        };
        drop(conn);
        let input = AudioInput::new(spec.to_string(), gain);
        let stop = Arc::new(AtomicBool::new(false));
        // Pulse objects stay on the thread that made them: the thread connects itself and says
        // whether its first stream opened.
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread = {
            let (input, stop, target) = (input.clone(), stop.clone(), target.clone());
            std::thread::Builder::new()
                .name("castline-audio-in".into())
                .spawn(move || run_input(target, &input, clock, &stop, started_tx))
                .map_err(audio_err)?
        };
        let me = Self {
            input,
            stop,
            thread: Some(thread),
        };
        match started_rx.recv_timeout(CONNECT_TIMEOUT * 2) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                me.stop.store(true, Ordering::SeqCst);
                return Err(audio_err(format!("{spec}: capture did not start")));
            }
        }
        tracing::info!(source = %spec, target = ?target, "audio_capture_started");
        Ok(me)
    }
}

impl Drop for PulseInput {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn opt(v: Option<u32>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "?".into())
}

fn join_or_none<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    let v: Vec<String> = items.map(|s| s.as_ref().to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// One record stream and the lane it fills.
struct Recording {
    stream: Stream,
    lane: Arc<Lane>,
}

fn open_stream(
    conn: &mut Connection,
    device: &str,
    monitor_of_input: Option<u32>,
    lane_name: &str,
) -> Result<Recording, CaptureError> {
    let spec = Spec {
        format: Format::FLOAT32NE,
        rate: mix::SAMPLE_RATE,
        channels: mix::CHANNELS as u8,
    };
    let mut stream = Stream::new(&mut conn.context, "castline capture", &spec, None)
        .ok_or_else(|| audio_err("cannot create a record stream"))?;
    if let Some(idx) = monitor_of_input {
        stream
            .set_monitor_stream(idx)
            .map_err(|e| audio_err(e.to_string().unwrap_or_default()))?;
    }
    let frag = (spec.usec_to_bytes(MicroSeconds(FRAGMENT.as_micros() as u64))) as u32;
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: u32::MAX,
        prebuf: u32::MAX,
        minreq: u32::MAX,
        fragsize: frag,
    };
    stream
        .connect_record(
            Some(device),
            Some(&attr),
            StreamFlags::ADJUST_LATENCY | StreamFlags::AUTO_TIMING_UPDATE | StreamFlags::DONT_MOVE,
        )
        .map_err(|e| audio_err(e.to_string().unwrap_or_default()))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        match stream.get_state() {
            StreamState::Ready => break,
            StreamState::Failed | StreamState::Terminated => {
                return Err(audio_err(format!("cannot record from '{device}'")))
            }
            _ => {}
        }
        if Instant::now() >= deadline || !conn.alive() {
            return Err(audio_err(format!("'{device}' did not start")));
        }
        conn.step(Duration::from_millis(20))?;
    }
    Ok(Recording {
        stream,
        lane: Lane::new(lane_name),
    })
}

/// Move everything readable from the stream into its lane. False when the stream is gone.
fn drain(rec: &mut Recording, clock: &MediaClock, scratch: &mut Vec<f32>) -> bool {
    if !matches!(rec.stream.get_state(), StreamState::Ready) {
        return false;
    }
    loop {
        let peeked = match rec.stream.peek() {
            Ok(p) => p,
            Err(_) => return false,
        };
        match peeked {
            PeekResult::Empty => return true,
            PeekResult::Hole(_) => {}
            PeekResult::Data(bytes) => {
                scratch.clear();
                scratch.extend(
                    bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
                );
                // The chunk's last sample was captured about now (10 ms fragments); its first
                // one a chunk earlier. The lane smooths arrival jitter and follows drift.
                let at = mix::us_to_sample(clock.now_us()) - (scratch.len() / mix::CHANNELS) as i64;
                rec.lane.push(at, scratch);
            }
        }
        if rec.stream.discard().is_err() {
            return false;
        }
    }
}

fn run_input(
    target: Target,
    input: &AudioInput,
    clock: MediaClock,
    stop: &AtomicBool,
    started: std::sync::mpsc::SyncSender<Result<(), CaptureError>>,
) {
    let mut streams: HashMap<u32, Recording> = HashMap::new();
    let mut conn = match Connection::open(CONNECT_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            let _ = started.send(Err(e));
            return;
        }
    };
    // Device inputs keep one lane for the whole run (its counters survive reopening); app
    // inputs get one lane per sink input.
    let device_lane = match &target {
        Target::Device(d) => match open_stream(&mut conn, d, None, d) {
            Ok(rec) => {
                input.add_lane(rec.lane.clone());
                let lane = rec.lane.clone();
                streams.insert(0, rec);
                Some(lane)
            }
            Err(e) => {
                let _ = started.send(Err(e));
                return;
            }
        },
        Target::App(_) | Target::AllExcept(_) => None,
    };
    let _ = started.send(Ok(()));
    let mut conn = Some(conn);
    let mut scratch = Vec::new();
    let mut next_scan = Instant::now();
    let mut lost = false;
    let report_lost = |reason: &str, lost: &mut bool| {
        if !std::mem::replace(lost, true) {
            input.lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(source = %input.name, reason, "audio_source_lost");
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = conn.as_mut().filter(|c| c.alive()) else {
            // The server went away: every stream is lost; reconnect on the rescan schedule.
            for (_, r) in streams.drain() {
                r.lane.set_live(false);
                if device_lane.is_none() {
                    input.remove_lane(&r.lane);
                }
            }
            report_lost("sound server connection lost", &mut lost);
            conn = None;
            std::thread::sleep(Duration::from_millis(100));
            if Instant::now() >= next_scan {
                next_scan = Instant::now() + RESCAN;
                conn = Connection::open(Duration::from_secs(1)).ok();
            }
            continue;
        };
        if c.step(Duration::from_millis(50)).is_err() {
            // Streams go before their connection; the branch above reports the loss.
            for (_, r) in streams.drain() {
                r.lane.set_live(false);
                if device_lane.is_none() {
                    input.remove_lane(&r.lane);
                }
            }
            conn = None;
            continue;
        }
        let mut device_gone = false;
        streams.retain(|idx, r| {
            let ok = drain(r, &clock, &mut scratch);
            if !ok {
                r.lane.set_live(false);
                if device_lane.is_none() {
                    input.remove_lane(&r.lane);
                    tracing::info!(source = %input.name, sink_input = idx, "audio_stream_ended");
                } else {
                    device_gone = true;
                }
            }
            ok
        });
        if device_gone {
            report_lost("device removed", &mut lost);
        }
        if Instant::now() < next_scan {
            continue;
        }
        next_scan = Instant::now() + RESCAN;
        match &target {
            Target::Device(device) => {
                if streams.is_empty() {
                    if let Ok(mut rec) = open_stream(c, device, None, device) {
                        if let Some(lane) = &device_lane {
                            rec.lane = lane.clone();
                        }
                        rec.lane.set_live(true);
                        if std::mem::replace(&mut lost, false) {
                            tracing::info!(source = %input.name, "audio_source_restored");
                        }
                        streams.insert(0, rec);
                    }
                }
            }
            Target::App(_) | Target::AllExcept(_) => {
                lost = false;
                let Ok(apps) = c.sink_inputs() else { continue };
                let monitors: HashMap<u32, String> = c
                    .sinks()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(i, _, _, mon)| (i, mon))
                    .collect();
                for a in apps.iter().filter(|a| target.takes(a)) {
                    if streams.contains_key(&a.sink_input) {
                        continue;
                    }
                    let Some(monitor) = monitors.get(&a.sink_index) else {
                        continue;
                    };
                    let name = format!("{} #{}", a.name, a.sink_input);
                    match open_stream(c, monitor, Some(a.sink_input), &name) {
                        Ok(rec) => {
                            tracing::info!(source = %input.name, sink_input = a.sink_input, "audio_stream_added");
                            input.add_lane(rec.lane.clone());
                            streams.insert(a.sink_input, rec);
                        }
                        Err(e) => {
                            tracing::debug!(source = %input.name, error = %e, "audio_stream_skipped")
                        }
                    }
                }
            }
        }
    }
    for (_, mut r) in streams.drain() {
        let _ = r.stream.disconnect();
    }
    drop(streams);
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parent_pid_reads_proc_and_children_are_found() {
        let me = std::process::id();
        let parent = parent_pid(me).unwrap();
        assert!(parent >= 1);
        assert!(descends_from(me, &AppMatch::Pid(parent)));
        assert!(!descends_from(me, &AppMatch::Pid(me)));
        assert!(!descends_from(me, &AppMatch::Pid(u32::MAX)));
        assert_eq!(parent_pid(u32::MAX), None);
    }
}
