//! What the X11 sources share: the connection and extension checks, MIT-SHM segments that the X
//! server copies pixels into (no socket transfer), cursor compositing from XFixes, and listing of
//! monitors (RandR) and windows (EWMH, falling back to the root's mapped children).

use std::sync::Arc;

use serde::Serialize;
use x11rb::connection::{Connection, RequestConnection};
use x11rb::protocol::composite::ConnectionExt as _;
use x11rb::protocol::damage::ConnectionExt as _;
use x11rb::protocol::randr::ConnectionExt as _;
use x11rb::protocol::shm::{self, ConnectionExt as _};
use x11rb::protocol::xfixes::ConnectionExt as _;
use x11rb::protocol::xproto::{self, AtomEnum, ConnectionExt as _, ImageFormat, MapState};
use x11rb::rust_connection::RustConnection;

use super::{unique_mut, BufferPool, Picture, PixelStore};
use crate::error::CaptureError;

/// A connection to `$DISPLAY` with the extensions castline uses probed once.
pub struct X11Conn {
    pub conn: RustConnection,
    pub root: xproto::Window,
    pub display: String,
    pub root_width: u32,
    pub root_height: u32,
    pub has_damage: bool,
    pub has_xfixes: bool,
    pub has_composite: bool,
    pub has_randr: bool,
}

impl X11Conn {
    pub fn connect() -> Result<Self, CaptureError> {
        let display = std::env::var("DISPLAY")
            .ok()
            .filter(|d| !d.is_empty())
            .ok_or(CaptureError::NoDisplayEnv)?;
        let (conn, screen_num) =
            x11rb::connect(None).map_err(|e| CaptureError::DisplayUnreachable {
                display: display.clone(),
                reason: e.to_string(),
            })?;
        let screen = &conn.setup().roots[screen_num];
        let (root, root_width, root_height) = (
            screen.root,
            screen.width_in_pixels as u32,
            screen.height_in_pixels as u32,
        );
        let has = |name: &'static str| -> bool {
            conn.extension_information(name)
                .map(|i| i.is_some())
                .unwrap_or(false)
        };
        if !has(shm::X11_EXTENSION_NAME) {
            return Err(CaptureError::MissingExtension("MIT-SHM"));
        }
        let has_damage = has(x11rb::protocol::damage::X11_EXTENSION_NAME)
            && conn
                .damage_query_version(1, 1)
                .ok()
                .and_then(|c| c.reply().ok())
                .is_some();
        let has_xfixes = has(x11rb::protocol::xfixes::X11_EXTENSION_NAME)
            && conn
                .xfixes_query_version(5, 0)
                .ok()
                .and_then(|c| c.reply().ok())
                .is_some();
        let has_composite = has(x11rb::protocol::composite::X11_EXTENSION_NAME)
            && conn
                .composite_query_version(0, 4)
                .ok()
                .and_then(|c| c.reply().ok())
                .is_some_and(|r| r.major_version > 0 || r.minor_version >= 2);
        let has_randr = has(x11rb::protocol::randr::X11_EXTENSION_NAME)
            && conn
                .randr_query_version(1, 5)
                .ok()
                .and_then(|c| c.reply().ok())
                .is_some_and(|r| r.major_version > 1 || r.minor_version >= 5);
        let dpy = display.as_str();
        tracing::debug!(
            dpy,
            has_damage,
            has_xfixes,
            has_composite,
            has_randr,
            "x11_connected"
        );
        Ok(Self {
            conn,
            root,
            display,
            root_width,
            root_height,
            has_damage,
            has_xfixes,
            has_composite,
            has_randr,
        })
    }

    /// Bits per pixel of ZPixmap images at `depth`; castline reads only 32-bit pixels.
    pub fn check_depth(&self, depth: u8) -> Result<(), CaptureError> {
        let bpp = self
            .conn
            .setup()
            .pixmap_formats
            .iter()
            .find(|f| f.depth == depth)
            .map(|f| f.bits_per_pixel);
        match bpp {
            Some(32) => Ok(()),
            other => Err(CaptureError::UnsupportedFormat(format!(
                "depth {depth} with {other:?} bits per pixel (need 32)"
            ))),
        }
    }
}

/// A System V shared-memory segment attached to both this process and the X server.
pub struct ShmSegment {
    addr: *mut u8,
    len: usize,
    seg: shm::Seg,
}

// SAFETY: the segment is plain memory; writes happen only through `&mut` (unique Arc) or by the X
// server while this process holds the only reference (see `ShmGrabber::grab`).
unsafe impl Send for ShmSegment {}
unsafe impl Sync for ShmSegment {}

impl ShmSegment {
    fn new(conn: &RustConnection, len: usize) -> Result<Self, CaptureError> {
        // SAFETY: plain libc calls; every result is checked before use.
        unsafe {
            let id = libc::shmget(libc::IPC_PRIVATE, len, libc::IPC_CREAT | 0o600);
            if id < 0 {
                return Err(CaptureError::Shm(format!(
                    "shmget({len}): {}",
                    std::io::Error::last_os_error()
                )));
            }
            let addr = libc::shmat(id, std::ptr::null(), 0);
            if addr as isize == -1 {
                let e = std::io::Error::last_os_error();
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                return Err(CaptureError::Shm(format!("shmat: {e}")));
            }
            let seg = match conn.generate_id() {
                Ok(s) => s,
                Err(e) => {
                    libc::shmdt(addr);
                    libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                    return Err(CaptureError::X11(e.to_string()));
                }
            };
            let attached = conn
                .shm_attach(seg, id as u32, false)
                .map_err(CaptureError::from)
                .and_then(|c| c.check().map_err(CaptureError::from));
            // Marked for removal now: the kernel frees it once both sides detach, even on a crash.
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            if let Err(e) = attached {
                libc::shmdt(addr);
                return Err(CaptureError::Shm(format!(
                    "the X server could not attach shared memory (remote display?): {e}"
                )));
            }
            Ok(Self {
                addr: addr as *mut u8,
                len,
                seg,
            })
        }
    }
}

impl PixelStore for ShmSegment {
    fn bytes(&self) -> &[u8] {
        // SAFETY: addr..addr+len is mapped for the life of self.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }
}

impl ShmSegment {
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above; &mut self guarantees no other reader in this process.
        unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) }
    }
}

impl Drop for ShmSegment {
    fn drop(&mut self) {
        // SAFETY: addr came from shmat. The X server's attachment is released by `ShmGrabber`.
        unsafe {
            libc::shmdt(self.addr as *const libc::c_void);
        }
    }
}

/// Grabs rectangles of a drawable into pooled shared-memory segments and paints the cursor.
pub struct ShmGrabber {
    pool: BufferPool<ShmSegment>,
    attached: Vec<shm::Seg>,
    show_cursor: bool,
    last_cursor: Option<(i16, i16, u32)>,
}

/// Where the pointer is and what it looks like, from XFixes.
pub struct CursorImage {
    pub x: i16,
    pub y: i16,
    pub serial: u32,
    reply: x11rb::protocol::xfixes::GetCursorImageReply,
}

impl ShmGrabber {
    pub fn new(show_cursor: bool, x: &X11Conn) -> Self {
        Self {
            pool: BufferPool::new(6),
            attached: Vec::new(),
            show_cursor: show_cursor && x.has_xfixes,
            last_cursor: None,
        }
    }

    /// The current cursor, when cursor capture is on.
    pub fn cursor(&self, x: &X11Conn) -> Result<Option<CursorImage>, CaptureError> {
        if !self.show_cursor {
            return Ok(None);
        }
        let reply = x.conn.xfixes_get_cursor_image()?.reply()?;
        Ok(Some(CursorImage {
            x: reply.x,
            y: reply.y,
            serial: reply.cursor_serial,
            reply,
        }))
    }

    /// Whether the cursor moved or changed shape since the last grab.
    pub fn cursor_changed(&self, c: &Option<CursorImage>) -> bool {
        match c {
            Some(c) => self.last_cursor != Some((c.x, c.y, c.serial)),
            None => false,
        }
    }

    /// Grab `w`×`h` at (`sx`,`sy`) of `drawable`; `origin` is the root position of the grabbed
    /// area's top-left, used to place the cursor.
    #[allow(clippy::too_many_arguments)]
    pub fn grab(
        &mut self,
        x: &X11Conn,
        drawable: xproto::Drawable,
        (sx, sy): (i16, i16),
        (w, h): (u32, u32),
        origin: (i32, i32),
        cursor: Option<CursorImage>,
    ) -> Result<Picture, CaptureError> {
        let len = (w * h * 4) as usize;
        let conn = &x.conn;
        let attached = &mut self.attached;
        let mut seg = self.pool.take(
            |s| s.len == len,
            || {
                let s = ShmSegment::new(conn, len)?;
                attached.push(s.seg);
                Ok(s)
            },
        )?;
        let reply = x
            .conn
            .shm_get_image(
                drawable,
                sx,
                sy,
                w as u16,
                h as u16,
                !0,
                ImageFormat::Z_PIXMAP.into(),
                seg.seg,
                0,
            )?
            .reply()?;
        if reply.size as usize != len {
            return Err(CaptureError::UnsupportedFormat(format!(
                "image of depth {} came back with {} bytes for {w}x{h}",
                reply.depth, reply.size
            )));
        }
        if let Some(c) = cursor {
            let px = unique_mut(&mut seg)?.bytes_mut();
            paint_cursor(px, w, h, origin, &c.reply);
            self.last_cursor = Some((c.x, c.y, c.serial));
        }
        self.pool.keep(&seg);
        Ok(Picture {
            width: w,
            height: h,
            stride: (w * 4) as usize,
            pixels: seg as Arc<dyn PixelStore>,
        })
    }

    /// Detach every segment from the X server (the memory itself lives until frames drop it).
    pub fn release(&mut self, x: &X11Conn) {
        for seg in self.attached.drain(..) {
            let _ = x.conn.shm_detach(seg);
        }
        let _ = x.conn.flush();
        self.pool.clear();
    }
}

/// Alpha-blend XFixes' premultiplied ARGB cursor onto a BGRA picture whose top-left is at
/// root position `origin`.
fn paint_cursor(
    px: &mut [u8],
    w: u32,
    h: u32,
    origin: (i32, i32),
    c: &x11rb::protocol::xfixes::GetCursorImageReply,
) {
    let left = c.x as i32 - c.xhot as i32 - origin.0;
    let top = c.y as i32 - c.yhot as i32 - origin.1;
    for cy in 0..c.height as i32 {
        let y = top + cy;
        if y < 0 || y >= h as i32 {
            continue;
        }
        for cx in 0..c.width as i32 {
            let x = left + cx;
            if x < 0 || x >= w as i32 {
                continue;
            }
            let Some(&argb) = c.cursor_image.get((cy * c.width as i32 + cx) as usize) else {
                return;
            };
            let a = argb >> 24;
            if a == 0 {
                continue;
            }
            let i = ((y as u32 * w + x as u32) * 4) as usize;
            let inv = 255 - a;
            for (k, shift) in [(0usize, 0u32), (1, 8), (2, 16)] {
                let s = (argb >> shift) & 0xff;
                let d = px[i + k] as u32;
                px[i + k] = (s + (d * inv + 127) / 255).min(255) as u8;
            }
        }
    }
}

/// One RandR monitor (or the whole screen when RandR reports none).
#[derive(Debug, Clone, Serialize)]
pub struct MonitorInfo {
    pub index: usize,
    pub name: String,
    pub width: u32,
    pub height: u32,
    pub x: i32,
    pub y: i32,
    pub primary: bool,
}

pub fn monitors(x: &X11Conn) -> Result<Vec<MonitorInfo>, CaptureError> {
    let mut out = Vec::new();
    if x.has_randr {
        let reply = x.conn.randr_get_monitors(x.root, true)?.reply()?;
        for (index, m) in reply.monitors.iter().enumerate() {
            let name = x
                .conn
                .get_atom_name(m.name)?
                .reply()
                .map(|r| String::from_utf8_lossy(&r.name).into_owned())
                .unwrap_or_else(|_| format!("monitor-{index}"));
            out.push(MonitorInfo {
                index,
                name,
                width: m.width as u32,
                height: m.height as u32,
                x: m.x as i32,
                y: m.y as i32,
                primary: m.primary,
            });
        }
    }
    if out.is_empty() {
        out.push(MonitorInfo {
            index: 0,
            name: "screen".into(),
            width: x.root_width,
            height: x.root_height,
            x: 0,
            y: 0,
            primary: true,
        });
    }
    // No RandR primary (Xvfb, some window managers): the first monitor, which holds the origin,
    // is the one apps treat as primary.
    if !out.iter().any(|m| m.primary) {
        out[0].primary = true;
    }
    Ok(out)
}

/// A top-level window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowInfo {
    pub id: u32,
    pub title: String,
    pub pid: Option<u32>,
    pub process_name: Option<String>,
    pub width: u32,
    pub height: u32,
    pub x: i32,
    pub y: i32,
}

fn atom(x: &X11Conn, name: &str) -> Result<u32, CaptureError> {
    Ok(x.conn.intern_atom(false, name.as_bytes())?.reply()?.atom)
}

fn property(
    x: &X11Conn,
    win: xproto::Window,
    prop: u32,
    ty: u32,
) -> Result<Option<xproto::GetPropertyReply>, CaptureError> {
    let r = x
        .conn
        .get_property(false, win, prop, ty, 0, 4096)?
        .reply()?;
    Ok((r.format != 0).then_some(r))
}

pub fn windows(x: &X11Conn) -> Result<Vec<WindowInfo>, CaptureError> {
    let client_list = atom(x, "_NET_CLIENT_LIST")?;
    let net_wm_name = atom(x, "_NET_WM_NAME")?;
    let utf8 = atom(x, "UTF8_STRING")?;
    let net_wm_pid = atom(x, "_NET_WM_PID")?;
    // With a window manager, its client list names the application windows; without one, the
    // root's mapped children are the top-level windows.
    let ids: Vec<u32> = match property(x, x.root, client_list, AtomEnum::WINDOW.into())? {
        Some(r) => r.value32().map(|v| v.collect()).unwrap_or_default(),
        None => x.conn.query_tree(x.root)?.reply()?.children,
    };
    let mut out = Vec::new();
    for id in ids {
        let Ok(attrs) = x.conn.get_window_attributes(id)?.reply() else {
            continue;
        };
        if attrs.map_state != MapState::VIEWABLE || attrs.override_redirect {
            continue;
        }
        let Ok(geo) = x.conn.get_geometry(id)?.reply() else {
            continue;
        };
        let title = match property(x, id, net_wm_name, utf8)? {
            Some(r) => String::from_utf8_lossy(&r.value).into_owned(),
            None => property(x, id, AtomEnum::WM_NAME.into(), AtomEnum::STRING.into())?
                .map(|r| String::from_utf8_lossy(&r.value).into_owned())
                .unwrap_or_default(),
        };
        let pid = property(x, id, net_wm_pid, AtomEnum::CARDINAL.into())?
            .and_then(|r| r.value32().and_then(|mut v| v.next()));
        let process_name = pid.and_then(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .ok()
                .map(|s| s.trim().to_string())
        });
        let pos = x
            .conn
            .translate_coordinates(id, x.root, 0, 0)?
            .reply()
            .map(|r| (r.dst_x as i32, r.dst_y as i32))
            .unwrap_or((geo.x as i32, geo.y as i32));
        out.push(WindowInfo {
            id,
            title,
            pid,
            process_name,
            width: geo.width as u32,
            height: geo.height as u32,
            x: pos.0,
            y: pos.1,
        });
    }
    Ok(out)
}

/// `castline list displays`.
pub fn list_displays() -> Result<Vec<MonitorInfo>, CaptureError> {
    monitors(&X11Conn::connect()?)
}

/// `castline list windows`.
pub fn list_windows() -> Result<Vec<WindowInfo>, CaptureError> {
    windows(&X11Conn::connect()?)
}
