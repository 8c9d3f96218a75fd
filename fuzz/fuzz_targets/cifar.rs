//! The CIFAR loader (node/src/data/cifar.rs) on arbitrary bytes as a CIFAR-10 file and
//! as a CIFAR-100 file (both label choices): an error naming the file, or samples whose
//! sizes and labels agree with the format; never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use wdml_node::data::cifar::{self, Cifar100Labels, Kind};
use wdml_node::data::raw::Values;

fuzz_target!(|data: &[u8]| {
    for kind in [
        Kind::Cifar10,
        Kind::Cifar100(Cifar100Labels::Fine),
        Kind::Cifar100(Cifar100Labels::Coarse),
    ] {
        if let Ok(set) = cifar::parse(data, Path::new("fuzz.bin"), kind) {
            assert_eq!(set.len() * kind.record_len(), data.len());
            assert!(matches!(&set.values, Values::U8(v) if v.len() == set.len() * cifar::PIXELS));
            assert!(set.labels.iter().all(|&l| usize::from(l) < kind.classes()));
            set.check(Path::new("fuzz.bin")).unwrap();
        }
    }
});
