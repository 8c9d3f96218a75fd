//! The NumPy loader (node/src/data/npy.rs) on arbitrary bytes: as a `.npz` archive, and
//! as the `x` then the `y` array of a set (the other one a valid array). An error naming
//! the file, or samples that pass `Samples::check`; never a panic, and never memory
//! taken on a header's word.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wdml_node::data::npy;

/// `np.save` of `np.zeros((1, 1), np.uint8)`: one sample, and its label 0.
const ONE: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1), }                                                          \n\x00";
const LABEL: &[u8] = b"\x93NUMPY\x01\x00v\x00{'descr': '|u1', 'fortran_order': False, 'shape': (1,), }                                                            \n\x00";

fuzz_target!(|data: &[u8]| {
    let source = Path::new("fuzz");
    if let Ok(loaded) = npy::parse_npz(data, source) {
        loaded.train.check(source).unwrap();
        if let Some(test) = &loaded.test {
            test.check(source).unwrap();
            assert_eq!(test.shape, loaded.train.shape);
        }
    }
    for (x, y) in [(data, LABEL), (ONE, data)] {
        if let Ok(set) = npy::parse_set(x, source, y, source) {
            set.check(source).unwrap();
        }
    }
});
