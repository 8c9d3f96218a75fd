//! The CSV loader (node/src/data/csv.rs) on arbitrary bytes, as one file and as a
//! train/test pair cut at the first NUL byte, with each header mode: an error naming
//! the file, or samples that pass `Samples::check`; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wdml_node::data::csv::{self, Header, LabelColumn};

fuzz_target!(|data: &[u8]| {
    let (train, test) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], Some((&data[at + 1..], Path::new("test.csv")))),
        None => (data, None),
    };
    let label = match data.first().map(|b| b % 3) {
        Some(0) => LabelColumn::Last,
        Some(1) => LabelColumn::Index(usize::from(data[0] / 3 % 4)),
        _ => LabelColumn::Name("label".into()),
    };
    for header in [Header::Auto, Header::Yes, Header::No] {
        if let Ok(loaded) = csv::parse(train, Path::new("train.csv"), test, &label, header) {
            loaded.train.check(Path::new("train.csv")).unwrap();
            assert_eq!(loaded.train.shape.len(), 1);
            if let Some(t) = &loaded.test {
                assert_eq!(t.shape, loaded.train.shape);
            }
            if let Some(classes) = loaded.classes {
                assert!(loaded.train.labels.iter().all(|&l| usize::from(l) < classes));
            }
        }
    }
});
