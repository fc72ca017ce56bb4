//! Test fixture for castline's integration tests and benchmark (not part of the product).
//!
//! * `content [--fps N] [--frames N] [--static]`: a full-screen window showing pre-rendered
//!   frames of textured content scrolling diagonally, blitted with XCopyArea at N Hz (≈1% CPU,
//!   so it does not skew measurements). `--static` paints once and never changes.
//! * `window --title T --size WxH --color RRGGBB [--at X,Y] [--resize-after S --resize-to WxH]`:
//!   a window filled with one colour and a white cross, with _NET_WM_PID and a title; prints its id
//!   (hex) on stdout once mapped.
//!
//! * `typing [--at X,Y] [--cps N]`: a 400×60 white "text line" window into which N (default 10)
//!   character-sized black glyph blocks per second are "typed", wrapping when the line is full:
//!   the small-region change of a person typing, for the zero-hertz benchmark.
//! * `pointer X Y`: move the pointer to (X, Y) on the root window and exit.
//! * `flashbeep [--period-ms N] [--length-ms N] [--freq HZ]`: a full-screen black window that
//!   turns white while a beep plays on the default PulseAudio sink, every period. The flash is
//!   timed from the playback stream's latency, so it appears when the beep is heard: the
//!   A/V-sync reference. Prints one line per beep: the UNIX time (µs) it plays.
//!
//! `content`, `window` and `flashbeep` run until killed.

use std::io::Write;
use std::time::{Duration, Instant};

use x11rb::connection::Connection;
use x11rb::protocol::xproto::*;
use x11rb::wrapper::ConnectionExt as _;
use x11rb::COPY_DEPTH_FROM_PARENT;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|s| s.as_str())
}

fn size(s: &str) -> Res<(u16, u16)> {
    let (w, h) = s.split_once('x').ok_or("size WxH")?;
    Ok((w.parse()?, h.parse()?))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(|s| s.as_str()) {
        Some("content") => content(&args),
        Some("window") => window(&args),
        Some("flashbeep") => flashbeep(&args),
        Some("typing") => typing(&args),
        Some("pointer") => {
            let x: i16 = args.get(2).ok_or("X")?.parse()?;
            let y: i16 = args.get(3).ok_or("Y")?.parse()?;
            let (conn, n) = x11rb::connect(None)?;
            let root = conn.setup().roots[n].root;
            conn.warp_pointer(x11rb::NONE, root, 0, 0, 0, 0, x, y)?;
            conn.sync()?;
            Ok(())
        }
        _ => Err("usage: castline-testkit content|window|pointer|flashbeep [options]".into()),
    }
}

fn create_window(
    conn: &impl Connection,
    screen: &Screen,
    (x, y, w, h): (i16, i16, u16, u16),
    override_redirect: bool,
) -> Res<Window> {
    let win = conn.generate_id()?;
    conn.create_window(
        COPY_DEPTH_FROM_PARENT,
        win,
        screen.root,
        x,
        y,
        w,
        h,
        0,
        WindowClass::INPUT_OUTPUT,
        0,
        &CreateWindowAux::new()
            .background_pixel(screen.black_pixel)
            .override_redirect(u32::from(override_redirect))
            .event_mask(EventMask::EXPOSURE | EventMask::STRUCTURE_NOTIFY),
    )?;
    Ok(win)
}

/// Upload a BGRA buffer into a new pixmap, in bands small enough for one request each.
fn upload(
    conn: &impl Connection,
    screen: &Screen,
    gc: Gcontext,
    w: u16,
    h: u16,
    px: &[u8],
) -> Res<Pixmap> {
    let pm = conn.generate_id()?;
    conn.create_pixmap(screen.root_depth, pm, screen.root, w, h)?;
    let rows_per_band = (1 << 20) / (w as usize * 4);
    for y0 in (0..h as usize).step_by(rows_per_band.max(1)) {
        let rows = rows_per_band.min(h as usize - y0);
        let band = &px[y0 * w as usize * 4..(y0 + rows) * w as usize * 4];
        conn.put_image(
            ImageFormat::Z_PIXMAP,
            pm,
            gc,
            w,
            rows as u16,
            0,
            y0 as i16,
            0,
            screen.root_depth,
            band,
        )?;
    }
    Ok(pm)
}

fn content(args: &[String]) -> Res<()> {
    let fps: u64 = arg(args, "--fps").unwrap_or("60").parse()?;
    let frames: usize = arg(args, "--frames").unwrap_or("30").parse()?;
    let still = args.iter().any(|a| a == "--static");
    let (conn, n) = x11rb::connect(None)?;
    let screen = conn.setup().roots[n].clone();
    let (w, h) = (screen.width_in_pixels, screen.height_in_pixels);
    let win = create_window(&conn, &screen, (0, 0, w, h), true)?;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, win, &CreateGCAux::new().graphics_exposures(0))?;
    // A texture of 16×16 tiles with hashed colours plus gradients: compressible but never flat,
    // so the encoder has real work on every frame.
    let tex = |x: usize, y: usize| -> [u8; 4] {
        let tile =
            ((x / 16) as u32).wrapping_mul(2_654_435_761) ^ ((y / 16) as u32).wrapping_mul(40_503);
        let t = tile.wrapping_mul(0x9E37_79B9) >> 8;
        [
            (t as u8) / 2 + (x % 256) as u8 / 2,
            ((t >> 8) as u8) / 2 + (y % 256) as u8 / 2,
            ((t >> 16) as u8) / 2 + ((x + y) % 256) as u8 / 2,
            255,
        ]
    };
    let frames = if still { 1 } else { frames.max(1) };
    let mut pixmaps = Vec::new();
    let mut px = vec![0u8; w as usize * h as usize * 4];
    for f in 0..frames {
        let shift = f * 8;
        for y in 0..h as usize {
            for x in 0..w as usize {
                let i = (y * w as usize + x) * 4;
                px[i..i + 4].copy_from_slice(&tex(x + shift, y + shift / 2));
            }
        }
        pixmaps.push(upload(&conn, &screen, gc, w, h, &px)?);
    }
    conn.map_window(win)?;
    conn.flush()?;
    let period = Duration::from_nanos(1_000_000_000 / fps.max(1));
    let start = Instant::now();
    let mut i = 0u64;
    loop {
        conn.copy_area(
            pixmaps[i as usize % pixmaps.len()],
            win,
            gc,
            0,
            0,
            0,
            0,
            w,
            h,
        )?;
        conn.sync()?;
        while conn.poll_for_event()?.is_some() {}
        if still {
            // Paint once; afterwards only an Expose repaints (never, on Xvfb).
            while !matches!(conn.wait_for_event()?, x11rb::protocol::Event::Expose(_)) {}
            continue;
        }
        i += 1;
        let due = start + period * i as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

fn window(args: &[String]) -> Res<()> {
    let title = arg(args, "--title").unwrap_or("castline-test");
    let (w, h) = size(arg(args, "--size").unwrap_or("320x240"))?;
    let color = u32::from_str_radix(arg(args, "--color").unwrap_or("ff0000"), 16)?;
    let (x, y) = match arg(args, "--at") {
        Some(s) => {
            let (a, b) = s.split_once(',').ok_or("--at X,Y")?;
            (a.parse()?, b.parse()?)
        }
        None => (100i16, 100i16),
    };
    let resize_after: Option<f64> = arg(args, "--resize-after").map(|s| s.parse()).transpose()?;
    let resize_to = arg(args, "--resize-to").map(size).transpose()?;
    let (conn, n) = x11rb::connect(None)?;
    let screen = conn.setup().roots[n].clone();
    let win = create_window(&conn, &screen, (x, y, w, h), false)?;
    let name = title.as_bytes();
    conn.change_property8(
        PropMode::REPLACE,
        win,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        name,
    )?;
    let utf8 = conn.intern_atom(false, b"UTF8_STRING")?.reply()?.atom;
    let net_name = conn.intern_atom(false, b"_NET_WM_NAME")?.reply()?.atom;
    conn.change_property8(PropMode::REPLACE, win, net_name, utf8, name)?;
    let net_pid = conn.intern_atom(false, b"_NET_WM_PID")?.reply()?.atom;
    conn.change_property32(
        PropMode::REPLACE,
        win,
        net_pid,
        AtomEnum::CARDINAL,
        &[std::process::id()],
    )?;
    let gc = conn.generate_id()?;
    conn.create_gc(
        gc,
        win,
        &CreateGCAux::new().foreground(color).graphics_exposures(0),
    )?;
    let white = conn.generate_id()?;
    conn.create_gc(
        white,
        win,
        &CreateGCAux::new().foreground(screen.white_pixel),
    )?;
    conn.map_window(win)?;
    conn.sync()?;
    let mut size_now = (w, h);
    let paint = |(w, h): (u16, u16)| -> Res<()> {
        conn.poly_fill_rectangle(
            win,
            gc,
            &[Rectangle {
                x: 0,
                y: 0,
                width: w,
                height: h,
            }],
        )?;
        conn.poly_fill_rectangle(
            win,
            white,
            &[
                Rectangle {
                    x: 0,
                    y: (h / 2) as i16 - 2,
                    width: w,
                    height: 4,
                },
                Rectangle {
                    x: (w / 2) as i16 - 2,
                    y: 0,
                    width: 4,
                    height: h,
                },
            ],
        )?;
        conn.flush()?;
        Ok(())
    };
    paint(size_now)?;
    println!("{win:#x}");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let mut resized = false;
    loop {
        while let Some(ev) = conn.poll_for_event()? {
            match ev {
                x11rb::protocol::Event::Expose(_) => paint(size_now)?,
                x11rb::protocol::Event::ConfigureNotify(e) => {
                    size_now = (e.width, e.height);
                    paint(size_now)?;
                }
                _ => {}
            }
        }
        if let (Some(after), Some((rw, rh)), false) = (resize_after, resize_to, resized) {
            if start.elapsed().as_secs_f64() >= after {
                conn.configure_window(
                    win,
                    &ConfigureWindowAux::new().width(rw as u32).height(rh as u32),
                )?;
                conn.flush()?;
                resized = true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn typing(args: &[String]) -> Res<()> {
    let (x, y) = match arg(args, "--at") {
        Some(s) => {
            let (a, b) = s.split_once(',').ok_or("--at X,Y")?;
            (a.parse()?, b.parse()?)
        }
        None => (100i16, 100i16),
    };
    let cps: f64 = arg(args, "--cps").unwrap_or("10").parse()?;
    let (conn, n) = x11rb::connect(None)?;
    let screen = conn.setup().roots[n].clone();
    let win = create_window(&conn, &screen, (x, y, 400, 60), true)?;
    let white = conn.generate_id()?;
    conn.create_gc(
        white,
        win,
        &CreateGCAux::new().foreground(screen.white_pixel),
    )?;
    let black = conn.generate_id()?;
    conn.create_gc(
        black,
        win,
        &CreateGCAux::new().foreground(screen.black_pixel),
    )?;
    conn.map_window(win)?;
    let clear = || -> Res<()> {
        let r = Rectangle {
            x: 0,
            y: 0,
            width: 400,
            height: 60,
        };
        conn.poly_fill_rectangle(win, white, &[r])?;
        Ok(())
    };
    clear()?;
    conn.flush()?;
    // Glyphs of 8×14 px with 2 px spacing, two lines of 38.
    let (per_line, lines) = (38u32, 2u32);
    let start = Instant::now();
    let mut typed = 0u32;
    loop {
        let due = (start.elapsed().as_secs_f64() * cps) as u32;
        while typed < due {
            let slot = typed % (per_line * lines);
            if slot == 0 {
                clear()?;
            }
            // Vary the glyph shape a little so consecutive characters differ.
            let h = 10 + (typed * 7 % 5) as u16;
            conn.poly_fill_rectangle(
                win,
                black,
                &[Rectangle {
                    x: 10 + (slot % per_line) as i16 * 10,
                    y: 12 + (slot / per_line) as i16 * 24 + (14 - h as i16),
                    width: 8,
                    height: h,
                }],
            )?;
            typed += 1;
        }
        conn.flush()?;
        while conn.poll_for_event()?.is_some() {}
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn flashbeep(args: &[String]) -> Res<()> {
    use libpulse_binding::def::BufferAttr;
    use libpulse_binding::sample::{Format, Spec};
    use libpulse_binding::stream::Direction;
    use libpulse_simple_binding::Simple;

    let period_ms: u64 = arg(args, "--period-ms").unwrap_or("1000").parse()?;
    let length_ms: u64 = arg(args, "--length-ms").unwrap_or("100").parse()?;
    let freq: f32 = arg(args, "--freq").unwrap_or("1000").parse()?;
    const RATE: u64 = 48_000;
    let spec = Spec {
        format: Format::FLOAT32NE,
        rate: RATE as u32,
        channels: 2,
    };
    // A small playback buffer (~40 ms) keeps the latency estimate tight.
    let attr = BufferAttr {
        maxlength: u32::MAX,
        tlength: (RATE * 8 * 40 / 1000) as u32,
        prebuf: u32::MAX,
        minreq: (RATE * 8 * 10 / 1000) as u32,
        fragsize: u32::MAX,
    };
    let pa = Simple::new(
        None,
        "castline-testkit",
        Direction::Playback,
        None,
        "flashbeep",
        &spec,
        None,
        Some(&attr),
    )
    .map_err(|e| format!("pulse: {e}"))?;

    let (conn, n) = x11rb::connect(None)?;
    let screen = conn.setup().roots[n].clone();
    let (w, h) = (screen.width_in_pixels, screen.height_in_pixels);
    let win = create_window(&conn, &screen, (0, 0, w, h), true)?;
    let gc = conn.generate_id()?;
    conn.create_gc(gc, win, &CreateGCAux::new().graphics_exposures(0))?;
    conn.map_window(win)?;
    conn.sync()?;
    // The painter thread shows each flash at the instant the audio thread computed.
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let painter = std::thread::spawn(move || -> Result<(), String> {
        let paint = |color: u32| -> Result<(), String> {
            paint_all(&conn, win, gc, (w, h), color).map_err(|e| e.to_string())
        };
        paint(screen.black_pixel)?;
        while let Ok(at) = rx.recv() {
            if let Some(d) = at.checked_duration_since(Instant::now()) {
                std::thread::sleep(d);
            }
            paint(screen.white_pixel)?;
            std::thread::sleep(Duration::from_millis(length_ms));
            paint(screen.black_pixel)?;
        }
        Ok(())
    });

    let block = (RATE / 100) as usize; // 10 ms
    let period = RATE * period_ms / 1000;
    let beep = RATE * length_ms / 1000;
    let mut pos: u64 = 0;
    let mut buf = Vec::with_capacity(block * 8);
    let mut out = std::io::stdout();
    loop {
        buf.clear();
        let mut beep_start = None;
        for i in 0..block as u64 {
            let n = pos + i;
            let phase = n % period;
            if phase == 0 && n > RATE {
                beep_start = Some(n);
            }
            let v = if phase < beep && n > RATE {
                0.5 * (2.0 * std::f32::consts::PI * freq * (phase as f32) / RATE as f32).sin()
            } else {
                0.0
            };
            buf.extend_from_slice(&v.to_ne_bytes());
            buf.extend_from_slice(&v.to_ne_bytes());
        }
        pa.write(&buf).map_err(|e| format!("pulse write: {e}"))?;
        pos += block as u64;
        if let Some(start) = beep_start {
            // Everything written so far plays `latency` from now; the beep is that much minus
            // what follows it in the buffer.
            let latency = pa
                .get_latency()
                .map(|l| Duration::from_micros(l.0))
                .unwrap_or_default();
            let after = Duration::from_micros((pos - start) * 1_000_000 / RATE);
            let at = Instant::now() + latency.saturating_sub(after);
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_micros()
                + latency.saturating_sub(after).as_micros();
            writeln!(out, "{unix}")?;
            if tx.send(at).is_err() {
                return Err(painter
                    .join()
                    .map_err(|_| "painter panicked")?
                    .err()
                    .unwrap_or_default()
                    .into());
            }
        }
    }
}

fn paint_all(
    conn: &impl Connection,
    win: Window,
    gc: Gcontext,
    (w, h): (u16, u16),
    color: u32,
) -> Res<()> {
    conn.change_gc(gc, &ChangeGCAux::new().foreground(color))?;
    let r = Rectangle {
        x: 0,
        y: 0,
        width: w,
        height: h,
    };
    conn.poly_fill_rectangle(win, gc, &[r])?;
    conn.sync()?;
    Ok(())
}
