//! The sentencepiece `tokenizer.model` reader (`Tokenizer::from_bytes`); a model that loads
//! also encodes and decodes a short text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixellm::tokenizer::Tokenizer;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = Tokenizer::from_bytes(data, None, None) {
        let ids = t.encode("Hi <image>  wörld\n[SEG0] 12 \u{1F600}", true);
        let _ = t.decode(&ids);
    }
});
