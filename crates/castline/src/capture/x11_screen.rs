//! The whole X screen or one RandR monitor, through MIT-SHM.
//!
//! XDamage tells which frames need a grab at all: with an unchanged screen and a still cursor,
//! `grab` costs one cursor query and returns "unchanged".

use x11rb::connection::Connection;
use x11rb::protocol::damage::{self, ConnectionExt as _, ReportLevel};
use x11rb::protocol::Event;

use super::x11::{monitors, ShmGrabber, X11Conn};
use super::{CaptureTime, Picture, VideoSource};
use crate::error::CaptureError;

pub struct ScreenSource {
    x: X11Conn,
    area: (i32, i32, u32, u32),
    label: String,
    damage: Option<damage::Damage>,
    dirty: bool,
    grabber: ShmGrabber,
}

impl ScreenSource {
    /// `monitor`: a RandR monitor index, or `None` for the whole screen.
    pub fn open(monitor: Option<usize>, show_cursor: bool) -> Result<Self, CaptureError> {
        let x = X11Conn::connect()?;
        let (area, label) = match monitor {
            None => (
                (0, 0, x.root_width, x.root_height),
                format!("screen {}", x.display),
            ),
            Some(i) => {
                let mons = monitors(&x)?;
                let m = mons.get(i).ok_or(CaptureError::UnknownMonitor {
                    index: i,
                    count: mons.len(),
                })?;
                (
                    (m.x, m.y, m.width, m.height),
                    format!("display {i} ({}) on {}", m.name, x.display),
                )
            }
        };
        if area.2 < 16 || area.3 < 16 {
            return Err(CaptureError::TooSmall {
                width: area.2,
                height: area.3,
            });
        }
        let depth = x
            .conn
            .setup()
            .roots
            .first()
            .map(|s| s.root_depth)
            .unwrap_or(0);
        x.check_depth(depth)?;
        let damage = if x.has_damage {
            let id = x.conn.generate_id()?;
            x.conn
                .damage_create(id, x.root, ReportLevel::DELTA_RECTANGLES)?
                .check()?;
            Some(id)
        } else {
            tracing::warn!("XDamage missing: grabbing every frame");
            None
        };
        let grabber = ShmGrabber::new(show_cursor, &x);
        Ok(Self {
            x,
            area,
            label,
            damage,
            dirty: true,
            grabber,
        })
    }

    /// Collect damage since the last call; true when any of it touches our area.
    fn poll_damage(&mut self) -> Result<(), CaptureError> {
        let Some(damage) = self.damage else {
            self.dirty = true;
            return Ok(());
        };
        let mut any = false;
        while let Some(ev) = self.x.conn.poll_for_event()? {
            if let Event::DamageNotify(e) = ev {
                any = true;
                let (ax, ay, aw, ah) = self.area;
                let (ex, ey) = (e.area.x as i32, e.area.y as i32);
                if ex < ax + aw as i32
                    && ey < ay + ah as i32
                    && ex + e.area.width as i32 > ax
                    && ey + e.area.height as i32 > ay
                {
                    self.dirty = true;
                }
            }
        }
        if any {
            // Subtracting before the grab means changes during the grab raise new events.
            self.x.conn.damage_subtract(damage, 0u32, 0u32)?;
            self.x.conn.flush()?;
        }
        Ok(())
    }
}

impl VideoSource for ScreenSource {
    fn describe(&self) -> String {
        format!("{} {}x{}", self.label, self.area.2, self.area.3)
    }

    fn size(&self) -> (u32, u32) {
        (self.area.2, self.area.3)
    }

    fn grab(&mut self, _at: CaptureTime) -> Result<Option<Picture>, CaptureError> {
        self.poll_damage()?;
        let cursor = self.grabber.cursor(&self.x)?;
        if !self.dirty && !self.grabber.cursor_changed(&cursor) {
            return Ok(None);
        }
        self.dirty = false;
        let (ax, ay, w, h) = self.area;
        self.grabber
            .grab(
                &self.x,
                self.x.root,
                (ax as i16, ay as i16),
                (w, h),
                (ax, ay),
                cursor,
            )
            .map(Some)
    }
}

impl Drop for ScreenSource {
    fn drop(&mut self) {
        self.grabber.release(&self.x);
        if let Some(d) = self.damage {
            let _ = self.x.conn.damage_destroy(d);
            let _ = self.x.conn.flush();
        }
    }
}
