//! `testsrc`: a synthetic moving picture that needs no display.
//!
//! Every frame carries its capture time in the picture so that a receiver can measure
//! glass-to-glass latency from decoded video. **Stamp format** (top-left band of the frame):
//!
//! * cell size `c = width / 48` pixels (integer division, needs width ≥ 192), square cells;
//! * two rows of 48 cells (96 bits) starting at (0,0), read left to right, top row first,
//!   most significant bit first; a white cell (luma 235) is 1, a black cell (luma 16) is 0;
//! * bits 0–63: capture time, microseconds since the UNIX epoch (u64);
//! * bits 64–87: frame tick number modulo 2^24;
//! * bits 88–95: CRC-8 (polynomial 0x07, init 0) of the 11 bytes before it.
//!
//! Read a stamp back by sampling the luma at each cell centre (> 128 → 1): see [`read_stamp`].

use super::{unique_mut, BufferPool, CaptureTime, Picture, VideoSource};
use crate::error::CaptureError;

const CELLS_PER_ROW: u32 = 48;
const STAMP_BITS: usize = 96;

/// A timestamp read back from a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub wall_us: u64,
    pub tick: u32,
}

pub struct TestSource {
    width: u32,
    height: u32,
    background: Vec<u8>,
    pool: BufferPool<Vec<u8>>,
    /// xorshift state when every frame gets fresh noise.
    noise: Option<u64>,
}

impl TestSource {
    pub fn new(width: u32, height: u32) -> Result<Self, CaptureError> {
        if width < 192 || height < 64 {
            return Err(CaptureError::TooSmall { width, height });
        }
        let mut background = vec![0u8; (width * height * 4) as usize];
        // Colour bars over a diagonal gradient: varied enough to exercise the encoder.
        const BARS: [[u8; 3]; 7] = [
            [192, 192, 192],
            [0, 192, 192],
            [192, 192, 0],
            [0, 192, 0],
            [192, 0, 192],
            [0, 0, 192],
            [192, 0, 0],
        ];
        for y in 0..height {
            for x in 0..width {
                let i = ((y * width + x) * 4) as usize;
                let bar = BARS[(x * 7 / width) as usize];
                let g = ((x + y) % 256) as u8 / 4;
                background[i] = bar[0].saturating_add(g);
                background[i + 1] = bar[1].saturating_add(g);
                background[i + 2] = bar[2].saturating_add(g);
                background[i + 3] = 255;
            }
        }
        Ok(Self {
            width,
            height,
            background,
            pool: BufferPool::new(6),
            noise: None,
        })
    }

    /// Fresh low-amplitude noise over the whole picture in every frame: nothing predicts it,
    /// so the encoder spends whatever bitrate it is given.
    pub fn with_noise(mut self) -> Self {
        self.noise = Some(0x9e37_79b9_7f4a_7c15);
        self
    }
}

/// Add ±16 of noise to every pixel's grey level (one random byte per pixel).
fn add_noise(px: &mut [u8], state: &mut u64) {
    for chunk in px.chunks_exact_mut(32) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let r = state.to_le_bytes();
        for (p, n) in chunk.chunks_exact_mut(4).zip(r) {
            let d = (n & 31) as i16 - 16;
            for c in &mut p[..3] {
                *c = (*c as i16 + d).clamp(0, 255) as u8;
            }
        }
    }
}

impl VideoSource for TestSource {
    fn describe(&self) -> String {
        let kind = if self.noise.is_some() {
            "testsrc:noise"
        } else {
            "testsrc"
        };
        format!("{kind} {}x{}", self.width, self.height)
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn grab(&mut self, at: CaptureTime) -> Result<Option<Picture>, CaptureError> {
        let len = self.background.len();
        let mut buf = self.pool.take(|b| b.len() == len, || Ok(vec![0u8; len]))?;
        let (w, h) = (self.width, self.height);
        {
            let px = unique_mut(&mut buf)?;
            px.copy_from_slice(&self.background);
            if let Some(state) = &mut self.noise {
                add_noise(px, state);
            }
            // A box that crosses the screen every 2 s and a bar that moves one row per frame.
            let bw = (w / 8).max(8);
            let bh = (h / 6).max(8);
            let span = w - bw;
            let pos =
                ((at.pts_us.max(0) as u64 * span as u64 / 1_000_000) % (2 * span as u64)) as u32;
            let bx = if pos < span { pos } else { 2 * span - pos };
            let by = h / 2 - bh / 2;
            fill_rect(px, w, bx, by, bw, bh, [255, 255, 255]);
            let row = (at.tick as u32 * 4) % (h - 8);
            fill_rect(px, w, 0, row.max(stamp_height(w) + 2), w, 4, [0, 0, 0]);
            draw_stamp(px, w, at.wall_us, at.tick as u32);
        }
        self.pool.keep(&buf);
        Ok(Some(Picture {
            width: w,
            height: h,
            stride: (w * 4) as usize,
            pixels: buf,
        }))
    }
}

fn fill_rect(px: &mut [u8], stride_px: u32, x: u32, y: u32, w: u32, h: u32, bgr: [u8; 3]) {
    let rows = px.len() as u32 / (stride_px * 4);
    for yy in y..(y + h).min(rows) {
        let start = ((yy * stride_px + x) * 4) as usize;
        let end = ((yy * stride_px + (x + w).min(stride_px)) * 4) as usize;
        for p in px[start..end].chunks_exact_mut(4) {
            p[0] = bgr[0];
            p[1] = bgr[1];
            p[2] = bgr[2];
            p[3] = 255;
        }
    }
}

fn stamp_height(width: u32) -> u32 {
    2 * (width / CELLS_PER_ROW)
}

fn stamp_bits(wall_us: u64, tick: u32) -> [bool; STAMP_BITS] {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&wall_us.to_be_bytes());
    bytes[8..11].copy_from_slice(&tick.to_be_bytes()[1..]);
    bytes[11] = crc8(&bytes[..11]);
    let mut bits = [false; STAMP_BITS];
    for (i, b) in bits.iter_mut().enumerate() {
        *b = bytes[i / 8] & (0x80 >> (i % 8)) != 0;
    }
    bits
}

/// Draw the stamp into a BGRA picture `width` pixels wide (stride = width * 4).
pub fn draw_stamp(px: &mut [u8], width: u32, wall_us: u64, tick: u32) {
    let c = width / CELLS_PER_ROW;
    for (i, bit) in stamp_bits(wall_us, tick).iter().enumerate() {
        let (col, row) = (i as u32 % CELLS_PER_ROW, i as u32 / CELLS_PER_ROW);
        // BGR 235/16 give luma 235/16 under BT.709 limited range.
        let v = if *bit { 255 } else { 0 };
        fill_rect(px, width, col * c, row * c, c, c, [v, v, v]);
    }
}

/// Read a stamp from an 8-bit luma plane; `None` when there is none or its CRC does not match.
pub fn read_stamp(luma: &[u8], width: u32, height: u32, stride: usize) -> Option<Stamp> {
    let c = width / CELLS_PER_ROW;
    if c == 0 || height < 2 * c {
        return None;
    }
    let mut bytes = [0u8; 12];
    for i in 0..STAMP_BITS {
        let (col, row) = (i as u32 % CELLS_PER_ROW, i as u32 / CELLS_PER_ROW);
        let (x, y) = (col * c + c / 2, row * c + c / 2);
        let v = *luma.get(y as usize * stride + x as usize)?;
        if v > 128 {
            bytes[i / 8] |= 0x80 >> (i % 8);
        }
    }
    if crc8(&bytes[..11]) != bytes[11] {
        return None;
    }
    let mut wall = [0u8; 8];
    wall.copy_from_slice(&bytes[..8]);
    Some(Stamp {
        wall_us: u64::from_be_bytes(wall),
        tick: u32::from_be_bytes([0, bytes[8], bytes[9], bytes[10]]),
    })
}

fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0u8;
    for &b in data {
        crc ^= b;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x07
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_through_luma() {
        let (w, h) = (640u32, 360u32);
        let mut bgra = vec![0u8; (w * h * 4) as usize];
        draw_stamp(&mut bgra, w, 1_763_700_000_123_456, 0x12_3456);
        let luma: Vec<u8> = bgra
            .chunks_exact(4)
            .map(|p| if p[0] > 0 { 235 } else { 16 })
            .collect();
        let s = read_stamp(&luma, w, h, w as usize).unwrap();
        assert_eq!(s.wall_us, 1_763_700_000_123_456);
        assert_eq!(s.tick, 0x12_3456);
    }

    #[test]
    fn corrupted_stamp_is_rejected() {
        let (w, h) = (640u32, 360u32);
        let mut bgra = vec![0u8; (w * h * 4) as usize];
        draw_stamp(&mut bgra, w, 42, 7);
        let mut luma: Vec<u8> = bgra.chunks_exact(4).map(|p| p[0]).collect();
        let c = (w / CELLS_PER_ROW) as usize;
        // Flip one data cell (bit 12, first row).
        let idx = (c / 2) * w as usize + 12 * c + c / 2;
        luma[idx] = 255 - luma[idx];
        assert_eq!(read_stamp(&luma, w, h, w as usize), None);
    }
}
