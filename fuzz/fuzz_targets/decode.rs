//! Arbitrary bytes from a (hostile) peer, through every decoding entry point.
//! Each must return a value or an error; a panic, an abort or an allocation
//! beyond the frame limit is a bug.
#![no_main]

use kiln_protocol::{blocking, frame, GuestMessage, HostMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = blocking::read_opening::<_, GuestMessage>(&mut &data[..]);
    let _ = blocking::read_opening::<_, HostMessage>(&mut &data[..]);
    // A stream of frames, as the host reads them after Hello.
    let mut rest = data;
    while let Ok(m) = blocking::read_message::<_, GuestMessage>(&mut rest) {
        // Whatever decodes must encode again to the same message.
        let bytes = frame::encode(&m).expect("a decoded message re-encodes");
        let back: GuestMessage = blocking::read_message(&mut bytes.as_slice()).expect("re-decodes");
        assert_eq!(back, m);
    }
    let _ = frame::decode_body::<HostMessage>(data);
});
