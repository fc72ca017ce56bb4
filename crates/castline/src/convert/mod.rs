//! BGRA → YUV 4:2:0 (I420 or NV12), BT.709 limited range, with yuvutils-rs (SIMD), and scaling.
//!
//! 4:2:0 needs even dimensions: odd source sizes are **cropped** by one column/row (the last
//! ones), never padded, so no border appears. When the (cropped) source size differs from the
//! encoded size (`--size`, or a captured window that was resized) the picture is converted at
//! source size and scaled with swscale into the largest centred rectangle that keeps its aspect
//! ratio; the rest is black (letterbox/pillarbox).

use yuvutils_rs::{
    BufferStoreMut, YuvBiPlanarImageMut, YuvConversionMode, YuvPlanarImageMut, YuvRange,
    YuvStandardMatrix,
};

use crate::capture::Picture;
use crate::error::ConvertError;

mod scale;
pub use scale::Scaler;

/// Memory layout of a 4:2:0 picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YuvLayout {
    /// Three planes: Y, U, V.
    I420,
    /// Two planes: Y, interleaved UV.
    Nv12,
}

/// Writable planes of a 4:2:0 picture (I420 uses three, NV12 two).
pub struct YuvPlanesMut<'a> {
    pub layout: YuvLayout,
    pub width: u32,
    pub height: u32,
    pub planes: Vec<&'a mut [u8]>,
    /// Bytes per row of each plane.
    pub strides: Vec<usize>,
}

/// Round down to even: what 4:2:0 can carry.
pub fn even_crop(width: u32, height: u32) -> (u32, u32) {
    (width & !1, height & !1)
}

/// BGRA → 4:2:0 at a fixed output size.
pub struct Converter {
    out: (u32, u32),
    /// Source-size I420 picture used when scaling.
    scratch: Vec<u8>,
    scaler: Option<Scaler>,
    warned_crop: bool,
}

impl Converter {
    pub fn new(out_width: u32, out_height: u32) -> Self {
        Self {
            out: (out_width, out_height),
            scratch: Vec::new(),
            scaler: None,
            warned_crop: false,
        }
    }

    pub fn convert(&mut self, pic: &Picture, dst: YuvPlanesMut<'_>) -> Result<(), ConvertError> {
        let (w, h) = even_crop(pic.width, pic.height);
        if (w, h) != (pic.width, pic.height) && !self.warned_crop {
            tracing::info!(
                from_width = pic.width,
                from_height = pic.height,
                width = w,
                height = h,
                "odd size cropped to even for 4:2:0"
            );
            self.warned_crop = true;
        }
        let bgra = pic.pixels.bytes();
        if bgra.len() < pic.stride * (h as usize).saturating_sub(1) + w as usize * 4 {
            return Err(ConvertError::Failed(
                "picture buffer shorter than its size".into(),
            ));
        }
        if (w, h) == self.out {
            return bgra_to_yuv(bgra, pic.stride, w, h, dst);
        }
        // Convert at source size into scratch I420, then scale into the output.
        let (cw, ch) = (w.div_ceil(2) as usize, h.div_ceil(2) as usize);
        let (ys, cs) = (w as usize * h as usize, cw * ch);
        self.scratch.resize(ys + 2 * cs, 0);
        let (y, uv) = self.scratch.split_at_mut(ys);
        let (u, v) = uv.split_at_mut(cs);
        bgra_to_yuv(
            bgra,
            pic.stride,
            w,
            h,
            YuvPlanesMut {
                layout: YuvLayout::I420,
                width: w,
                height: h,
                planes: vec![y, u, v],
                strides: vec![w as usize, cw, cw],
            },
        )?;
        let scaler = match self.scaler.take() {
            Some(s) if s.matches(w, h, &dst) => s,
            _ => Scaler::new(w, h, &dst)?,
        };
        let (y, uv) = self.scratch.split_at(ys);
        let (u, v) = uv.split_at(cs);
        let res = scaler.scale([y, u, v], [w as usize, cw, cw], dst);
        self.scaler = Some(scaler);
        res
    }
}

/// Convert `w`×`h` BGRA (stride in bytes) into `dst` of the same size.
pub fn bgra_to_yuv(
    bgra: &[u8],
    stride: usize,
    w: u32,
    h: u32,
    dst: YuvPlanesMut<'_>,
) -> Result<(), ConvertError> {
    if (dst.width, dst.height) != (w, h) {
        return Err(ConvertError::Failed(format!(
            "size mismatch {w}x{h} → {}x{}",
            dst.width, dst.height
        )));
    }
    let (range, matrix, mode) = (
        YuvRange::Limited,
        YuvStandardMatrix::Bt709,
        YuvConversionMode::Balanced,
    );
    let mut planes = dst.planes.into_iter();
    let mut next = || {
        planes
            .next()
            .ok_or_else(|| ConvertError::Failed("missing plane".into()))
    };
    let res = match dst.layout {
        YuvLayout::I420 => {
            let mut img = YuvPlanarImageMut {
                y_plane: BufferStoreMut::Borrowed(next()?),
                y_stride: dst.strides[0] as u32,
                u_plane: BufferStoreMut::Borrowed(next()?),
                u_stride: dst.strides[1] as u32,
                v_plane: BufferStoreMut::Borrowed(next()?),
                v_stride: dst.strides[2] as u32,
                width: w,
                height: h,
            };
            yuvutils_rs::bgra_to_yuv420(&mut img, bgra, stride as u32, range, matrix, mode)
        }
        YuvLayout::Nv12 => {
            let mut img = YuvBiPlanarImageMut {
                y_plane: BufferStoreMut::Borrowed(next()?),
                y_stride: dst.strides[0] as u32,
                uv_plane: BufferStoreMut::Borrowed(next()?),
                uv_stride: dst.strides[1] as u32,
                width: w,
                height: h,
            };
            yuvutils_rs::bgra_to_yuv_nv12(&mut img, bgra, stride as u32, range, matrix, mode)
        }
    };
    res.map_err(|e| ConvertError::Failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert_solid(b: u8, g: u8, r: u8) -> (u8, u8, u8) {
        let (w, h) = (16u32, 16u32);
        let bgra: Vec<u8> = (0..w * h).flat_map(|_| [b, g, r, 255]).collect();
        let (mut y, mut u, mut v) = (vec![0u8; 256], vec![0u8; 64], vec![0u8; 64]);
        bgra_to_yuv(
            &bgra,
            64,
            w,
            h,
            YuvPlanesMut {
                layout: YuvLayout::I420,
                width: w,
                height: h,
                planes: vec![&mut y, &mut u, &mut v],
                strides: vec![16, 8, 8],
            },
        )
        .unwrap();
        (y[0], u[0], v[0])
    }

    #[test]
    fn bt709_limited_range_levels() {
        assert_eq!(convert_solid(255, 255, 255).0, 235);
        assert_eq!(convert_solid(0, 0, 0).0, 16);
        // Pure red under BT.709 limited: Y≈63, U≈102, V≈240 (BT.601 would give Y≈81).
        let (y, u, v) = convert_solid(0, 0, 255);
        assert!((61..=65).contains(&y), "Y={y}");
        assert!((100..=104).contains(&u), "U={u}");
        assert!((238..=241).contains(&v), "V={v}");
    }

    #[test]
    fn odd_sizes_crop_to_even() {
        assert_eq!(even_crop(1365, 767), (1364, 766));
        assert_eq!(even_crop(1920, 1080), (1920, 1080));
    }
}
