//! The image front end (`decode_image_with_limits`: format sniffing, header limits, EXIF
//! orientation, 16-bit / grey / alpha conversion). The limits are smaller than the default
//! ones (2^28 pixels) so that a valid-but-large header does not hit libFuzzer's 2 GiB RSS
//! limit; the limit check itself is the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pixellm::image::{decode_image_with_limits, DecodeLimits};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_side: 4096,
        max_pixels: 1 << 22,
    };
    if let Ok(img) = decode_image_with_limits(data, "fuzz", &limits) {
        assert!(img.width() > 0 && img.height() > 0);
        assert!(img.width() <= 4096 && img.height() <= 4096);
    }
});
