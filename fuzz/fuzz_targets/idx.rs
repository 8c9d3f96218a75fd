//! The IDX loader (node/src/data/idx.rs) on arbitrary bytes, gzipped or not: an images
//! file and a labels file. It answers with an error naming the file, or with a set whose
//! sizes agree with its header; it never panics and never trusts a header with memory.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wdml_node::data::idx;

fuzz_target!(|data: &[u8]| {
    let source = Path::new("fuzz");
    if let Ok(images) = idx::parse_images(data, source) {
        assert_eq!(images.pixels.len(), images.count * images.shape.iter().product::<usize>());
        assert!(matches!(images.shape.len(), 1 | 3));
    }
    let _ = idx::parse_labels(data, source);
});
