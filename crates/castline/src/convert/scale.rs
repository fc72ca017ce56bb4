//! Aspect-preserving scaling of I420 into a 4:2:0 destination with swscale.
//! YUV → YUV, so swscale's colour-matrix default (BT.601) never applies.

use ffmpeg_next::ffi;

use super::{YuvLayout, YuvPlanesMut};
use crate::error::ConvertError;

pub struct Scaler {
    ctx: *mut ffi::SwsContext,
    src: (u32, u32),
    dst: (u32, u32),
    layout: YuvLayout,
    /// Where the scaled picture lands inside the destination (x, y, w, h), all even.
    rect: (u32, u32, u32, u32),
}

// SAFETY: the context is used by one thread at a time (owned by the encode thread).
unsafe impl Send for Scaler {}

impl Scaler {
    pub fn new(sw: u32, sh: u32, dst: &YuvPlanesMut<'_>) -> Result<Self, ConvertError> {
        let (dw, dh) = (dst.width, dst.height);
        // Largest centred rectangle with the source's aspect ratio, rounded to even.
        let (rw, rh) = if sw as u64 * dh as u64 > sh as u64 * dw as u64 {
            (dw, ((dw as u64 * sh as u64 / sw as u64) as u32 & !1).max(2))
        } else {
            (((dh as u64 * sw as u64 / sh as u64) as u32 & !1).max(2), dh)
        };
        let rect = (((dw - rw) / 2) & !1, ((dh - rh) / 2) & !1, rw, rh);
        let dst_fmt = match dst.layout {
            YuvLayout::I420 => ffi::AVPixelFormat::AV_PIX_FMT_YUV420P,
            YuvLayout::Nv12 => ffi::AVPixelFormat::AV_PIX_FMT_NV12,
        };
        // SAFETY: plain constructor; null checked.
        let ctx = unsafe {
            ffi::sws_getContext(
                sw as i32,
                sh as i32,
                ffi::AVPixelFormat::AV_PIX_FMT_YUV420P,
                rw as i32,
                rh as i32,
                dst_fmt,
                ffi::SWS_BILINEAR,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        };
        if ctx.is_null() {
            return Err(ConvertError::Failed(format!(
                "cannot scale {sw}x{sh} to {rw}x{rh}"
            )));
        }
        tracing::info!(
            from = format!("{sw}x{sh}"),
            to = format!("{rw}x{rh}"),
            at = format!("{},{}", rect.0, rect.1),
            "scaler_configured"
        );
        Ok(Self {
            ctx,
            src: (sw, sh),
            dst: (dw, dh),
            layout: dst.layout,
            rect,
        })
    }

    pub fn matches(&self, sw: u32, sh: u32, dst: &YuvPlanesMut<'_>) -> bool {
        self.src == (sw, sh) && self.dst == (dst.width, dst.height) && self.layout == dst.layout
    }

    pub fn scale(
        &self,
        src: [&[u8]; 3],
        src_strides: [usize; 3],
        mut dst: YuvPlanesMut<'_>,
    ) -> Result<(), ConvertError> {
        let (rx, ry, _, _) = self.rect;
        let letterboxed = self.rect.2 != self.dst.0 || self.rect.3 != self.dst.1;
        // Black borders first (Y=16, chroma=128), then the picture on top.
        if letterboxed {
            for (i, p) in dst.planes.iter_mut().enumerate() {
                p.fill(if i == 0 { 16 } else { 128 });
            }
        }
        let mut ptrs = [std::ptr::null_mut::<u8>(); 4];
        let mut strides = [0i32; 4];
        for (i, p) in dst.planes.iter_mut().enumerate() {
            let (xo, yo) = match (i, self.layout) {
                (0, _) => (rx as usize, ry as usize),
                (_, YuvLayout::I420) => (rx as usize / 2, ry as usize / 2),
                (_, YuvLayout::Nv12) => (rx as usize, ry as usize / 2),
            };
            let off = yo * dst.strides[i] + xo;
            if off >= p.len() {
                return Err(ConvertError::Failed("scale target outside plane".into()));
            }
            // SAFETY: offset checked to be inside the plane; swscale writes rect-sized rows.
            ptrs[i] = unsafe { p.as_mut_ptr().add(off) };
            strides[i] = dst.strides[i] as i32;
        }
        let sp = [
            src[0].as_ptr(),
            src[1].as_ptr(),
            src[2].as_ptr(),
            std::ptr::null(),
        ];
        let ss = [
            src_strides[0] as i32,
            src_strides[1] as i32,
            src_strides[2] as i32,
            0,
        ];
        // SAFETY: source planes hold src.1 rows of their strides; destination pointers are inside
        // planes sized for the full destination, and the rect fits within it.
        let rows = unsafe {
            ffi::sws_scale(
                self.ctx,
                sp.as_ptr(),
                ss.as_ptr(),
                0,
                self.src.1 as i32,
                ptrs.as_ptr(),
                strides.as_ptr(),
            )
        };
        if rows <= 0 {
            return Err(ConvertError::Failed("swscale produced no rows".into()));
        }
        Ok(())
    }
}

impl Drop for Scaler {
    fn drop(&mut self) {
        // SAFETY: ctx came from sws_getContext.
        unsafe { ffi::sws_freeContext(self.ctx) }
    }
}
