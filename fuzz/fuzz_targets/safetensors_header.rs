//! `WeightFiles::from_bytes` on safetensors input, then every tensor read back as f32.
//!
//! The first byte picks the mode. Even: the rest is the whole file. Odd: the rest is the
//! JSON header; the length field is prepended and a data section as long as the largest
//! `data_offsets` end claims (at most 1 MiB) appended, so that fuzzing gets past the
//! "file exactly covered" check into the shape / dtype / offset validation and the reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixellm::weights::WeightFiles;

fn with_header(header: &[u8]) -> Vec<u8> {
    let end = serde_json::from_slice::<serde_json::Value>(header)
        .ok()
        .and_then(|v| {
            v.as_object()?
                .values()
                .filter_map(|t| t.get("data_offsets")?.get(1)?.as_u64())
                .max()
        })
        .unwrap_or(0)
        .min(1 << 20) as usize;
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend((0..end).map(|i| (i * 7 + 3) as u8));
    file
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let file = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        with_header(rest)
    };
    if let Ok(w) = WeightFiles::from_bytes("fuzz.safetensors", file) {
        for name in w.names() {
            let _ = w.info(&name);
            let _ = w.read_f32_any(&name);
        }
        let _ = w.total_bytes();
    }
});
