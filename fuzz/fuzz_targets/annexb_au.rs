//! H.264 Annex-B bytes from an ffmpeg child, in chunks as a pipe delivers them: access-unit
//! grouping, and the stream parameters read from the first access unit.
#![no_main]
use castline::capture::ffmpeg_process::{stream_info_of, AuAssembler};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut a = AuAssembler::default();
    let mut out = Vec::new();
    // The first byte cuts the rest into pipe reads of 1..=256 bytes.
    let Some((&cut, rest)) = data.split_first() else { return };
    for chunk in rest.chunks(cut as usize + 1) {
        if a.push(chunk, &mut out).is_err() {
            return;
        }
    }
    a.finish(&mut out);
    for (au, _) in &out {
        let _ = stream_info_of(au, 30, 1_000_000);
    }
});
