//! The torch.save pickle reader, through `WeightFiles::from_bytes`: the input becomes
//! `archive/data.pkl` of a zip that also holds `byteorder` and two storages
//! (`archive/data/0`: 256 bytes, `archive/data/1`: 64 bytes), then every tensor the
//! pickle describes is read back as f32.
#![no_main]

use std::io::{Cursor, Write};

use libfuzzer_sys::fuzz_target;
use pixellm::weights::WeightFiles;
use zip::write::SimpleFileOptions;

fn archive(pickle: &[u8]) -> Vec<u8> {
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let storage0: Vec<u8> = (0..=255u8).collect();
    let storage1 = [0x3fu8; 64];
    for (name, bytes) in [
        ("archive/data.pkl", pickle),
        ("archive/byteorder", b"little".as_slice()),
        ("archive/data/0", &storage0),
        ("archive/data/1", &storage1),
    ] {
        w.start_file(name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(w) = WeightFiles::from_bytes("fuzz.bin", archive(data)) {
        for name in w.names() {
            let _ = w.read_f32_any(&name);
        }
    }
});
