//! One window by id. With XComposite the window is redirected off-screen and grabbed from its
//! named pixmap, so overlapping windows do not show through; without it, the visible window area
//! is grabbed. Size changes (ConfigureNotify) re-create the pixmap; the pipeline scales each new
//! size into the fixed output size.

use x11rb::connection::Connection;
use x11rb::protocol::composite::{ConnectionExt as _, Redirect};
use x11rb::protocol::damage::{self, ConnectionExt as _, ReportLevel};
use x11rb::protocol::xproto::{
    ChangeWindowAttributesAux, ConnectionExt as _, EventMask, MapState, Pixmap, Window,
};
use x11rb::protocol::Event;

use super::x11::{ShmGrabber, X11Conn};
use super::{CaptureTime, Picture, VideoSource};
use crate::error::CaptureError;

pub struct WindowSource {
    x: X11Conn,
    win: Window,
    size: (u32, u32),
    border: u16,
    pixmap: Option<Pixmap>,
    damage: Option<damage::Damage>,
    dirty: bool,
    mapped: bool,
    grabber: ShmGrabber,
}

impl WindowSource {
    pub fn open(win: Window, show_cursor: bool) -> Result<Self, CaptureError> {
        let x = X11Conn::connect()?;
        let attrs = x
            .conn
            .get_window_attributes(win)?
            .reply()
            .map_err(|_| CaptureError::UnknownWindow(win))?;
        if attrs.map_state != MapState::VIEWABLE {
            return Err(CaptureError::WindowNotViewable(win));
        }
        let geo = x
            .conn
            .get_geometry(win)?
            .reply()
            .map_err(|_| CaptureError::UnknownWindow(win))?;
        x.check_depth(geo.depth)?;
        if geo.width < 16 || geo.height < 16 {
            return Err(CaptureError::TooSmall {
                width: geo.width as u32,
                height: geo.height as u32,
            });
        }
        x.conn
            .change_window_attributes(
                win,
                &ChangeWindowAttributesAux::new().event_mask(EventMask::STRUCTURE_NOTIFY),
            )?
            .check()?;
        if x.has_composite {
            x.conn
                .composite_redirect_window(win, Redirect::AUTOMATIC)?
                .check()?;
        } else {
            tracing::warn!("XComposite missing: grabbing the visible window area");
        }
        let damage = if x.has_damage {
            let id = x.conn.generate_id()?;
            x.conn
                .damage_create(id, win, ReportLevel::NON_EMPTY)?
                .check()?;
            Some(id)
        } else {
            None
        };
        let grabber = ShmGrabber::new(show_cursor, &x);
        let mut s = Self {
            x,
            win,
            size: (geo.width as u32, geo.height as u32),
            border: geo.border_width,
            pixmap: None,
            damage,
            dirty: true,
            mapped: true,
            grabber,
        };
        s.name_pixmap()?;
        Ok(s)
    }

    /// (Re)bind the window's off-screen pixmap; needed after every map and resize.
    fn name_pixmap(&mut self) -> Result<(), CaptureError> {
        if !self.x.has_composite {
            return Ok(());
        }
        if let Some(p) = self.pixmap.take() {
            self.x.conn.free_pixmap(p)?;
        }
        let p = self.x.conn.generate_id()?;
        self.x
            .conn
            .composite_name_window_pixmap(self.win, p)?
            .check()?;
        self.pixmap = Some(p);
        Ok(())
    }

    fn poll_events(&mut self) -> Result<(), CaptureError> {
        let mut damaged = false;
        while let Some(ev) = self.x.conn.poll_for_event()? {
            match ev {
                Event::DamageNotify(_) => damaged = true,
                Event::ConfigureNotify(e) if e.window == self.win => {
                    let size = (e.width as u32, e.height as u32);
                    if size != self.size || e.border_width != self.border {
                        tracing::info!(
                            window = self.win,
                            width = size.0,
                            height = size.1,
                            "window_resized"
                        );
                        self.size = size;
                        self.border = e.border_width;
                        self.name_pixmap()?;
                        self.dirty = true;
                    }
                }
                Event::UnmapNotify(e) if e.window == self.win => self.mapped = false,
                Event::MapNotify(e) if e.window == self.win => {
                    self.mapped = true;
                    self.name_pixmap()?;
                    self.dirty = true;
                }
                Event::DestroyNotify(e) if e.window == self.win => {
                    self.pixmap = None;
                    return Err(CaptureError::WindowClosed(self.win));
                }
                _ => {}
            }
        }
        match self.damage {
            Some(d) if damaged => {
                self.dirty = true;
                self.x.conn.damage_subtract(d, 0u32, 0u32)?;
                self.x.conn.flush()?;
            }
            None => self.dirty = true,
            _ => {}
        }
        Ok(())
    }
}

impl VideoSource for WindowSource {
    fn describe(&self) -> String {
        format!(
            "window {:#x} on {} {}x{}",
            self.win, self.x.display, self.size.0, self.size.1
        )
    }

    fn size(&self) -> (u32, u32) {
        self.size
    }

    fn grab(&mut self, _at: CaptureTime) -> Result<Option<Picture>, CaptureError> {
        self.poll_events()?;
        if !self.mapped || self.size.0 < 2 || self.size.1 < 2 {
            // Minimised or hidden: the pipeline repeats the last picture.
            return Ok(None);
        }
        let cursor = self.grabber.cursor(&self.x)?;
        if !self.dirty && !self.grabber.cursor_changed(&cursor) {
            return Ok(None);
        }
        self.dirty = false;
        let origin = if cursor.is_some() {
            let r = self
                .x
                .conn
                .translate_coordinates(self.win, self.x.root, 0, 0)?
                .reply()?;
            (r.dst_x as i32, r.dst_y as i32)
        } else {
            (0, 0)
        };
        let (drawable, offset) = match self.pixmap {
            // The named pixmap includes the border.
            Some(p) => (p, (self.border as i16, self.border as i16)),
            None => (self.win, (0, 0)),
        };
        self.grabber
            .grab(&self.x, drawable, offset, self.size, origin, cursor)
            .map(Some)
    }
}

impl Drop for WindowSource {
    fn drop(&mut self) {
        self.grabber.release(&self.x);
        if let Some(p) = self.pixmap.take() {
            let _ = self.x.conn.free_pixmap(p);
        }
        if let Some(d) = self.damage {
            let _ = self.x.conn.damage_destroy(d);
        }
        let _ = self
            .x
            .conn
            .composite_unredirect_window(self.win, Redirect::AUTOMATIC);
        let _ = self.x.conn.flush();
    }
}
