//! The peer service's message validation and decoding (node/src/exchange/service.rs,
//! codec.rs) on arbitrary frames: the input is a sequence of length-delimited protobuf
//! `Frame`s, as a peer could send on one stream. Whatever arrives, validation answers
//! with a status or a decoded message; it never panics, and a message it accepts has
//! the expected shape and only finite values.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use wdml_node::exchange::{Assembler, Expectation};
use wdml_proto::{Encoding, Frame};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the run's encoding (a receiver refuses any other), so every
    // decoder is fuzzed.
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let encoding = [Encoding::F32, Encoding::F16, Encoding::Q8, Encoding::Q4, Encoding::Topk][usize::from(pick) % 5];
    let expect = Expectation {
        run_id: "fuzz".into(),
        me: 0,
        nodes: 4,
        rows: 2,
        cols: 3,
        max_message_bytes: 1 << 20,
        encoding,
        top_k: if encoding == Encoding::Topk { 2 } else { 0 },
    };
    let mut message = Assembler::new(&expect);
    let mut bytes = data;
    while !bytes.is_empty() {
        let Ok(frame) = Frame::decode_length_delimited(&mut bytes) else {
            return;
        };
        match message.push(frame) {
            Ok(true) => break,
            Ok(false) => {}
            Err(_) => return,
        }
    }
    if let Ok(delivered) = message.finish() {
        assert_eq!(delivered.values.len(), 6);
        assert!(delivered.values.iter().all(|v| v.is_finite()));
        assert!(delivered.sender < 4 && delivered.sender != 0);
    }
});
