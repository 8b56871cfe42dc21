//! Fuzzes the upload path up to the model input: bytes → `decode::decode_limited` → `preprocess`
//! for both model families' specs, and the DCT-reduced JPEG path (`decode::decode_reduced`,
//! libjpeg-turbo), which must decode whatever the full-size path decodes. Decoding must never panic, and a refusal must map to a
//! client-error status (413, 415 or 422); a decoded image must preprocess into exactly
//! `spec.numel()` finite values.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The real server modules, compiled in by path. Depending on the kadr crate instead would build
// FAISS and candle (and the rest of the server) under the sanitizer; these two modules are
// self-contained (image, turbojpeg, fast_image_resize, rayon, thiserror).
#[allow(dead_code)]
#[path = "../../src/decode.rs"]
mod decode;
#[allow(dead_code)]
#[path = "../../src/preprocess.rs"]
mod preprocess;

/// Small enough that legitimately large images stay well inside libFuzzer's memory limit.
const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|data: &[u8]| {
    // Reduced as far as a 1-pixel side allows, so every JPEG of 2×2 or more goes through
    // libjpeg-turbo.
    let reduced = decode::decode_reduced(data, MAX_PIXELS, 1);
    let full = decode::decode_limited(data, MAX_PIXELS);
    // What the full-size path decodes, the reduced path decodes too, at the same full size.
    if let Ok(img) = &full {
        match &reduced {
            Ok(d) => assert_eq!((d.width, d.height), img.dimensions()),
            Err(e) => panic!("decoded at full size, refused reduced: {e}"),
        }
    }
    match full {
        Ok(img) => {
            let (w, h) = img.dimensions();
            assert!(w > 0 && h > 0, "decoded an empty {w}×{h} image");
            assert!(
                u64::from(w) * u64::from(h) <= MAX_PIXELS,
                "decoded {w}×{h}, over the {MAX_PIXELS}-pixel limit"
            );
            for spec in [
                preprocess::PreprocessSpec::efficientnet_lite(),
                preprocess::PreprocessSpec::imagenet(224, 0.875),
            ] {
                let x = preprocess::preprocess(&img, &spec);
                assert_eq!(x.len(), spec.numel(), "{w}×{h} with {spec:?}");
                assert!(x.iter().all(|v| v.is_finite()), "non-finite value, {w}×{h}");
            }
        }
        Err(e) => {
            let status = e.status();
            assert!(
                matches!(status, 413 | 415 | 422),
                "status {status} for {e} ({})",
                e.kind()
            );
        }
    }
});
