//! Fuzzes everything that decodes untrusted stream bytes: frame bodies, the record/frame
//! opener of an established session, and handshake message 1 at a responder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lifeboat_protocol::frame::{decode_body, FrameOpener};
use lifeboat_protocol::handshake::{negotiate, take_record, Initiator, Responder};
use lifeboat_protocol::message::Hello;
use lifeboat_protocol::StaticKeypair;
use std::sync::OnceLock;

fn hello() -> Hello {
    Hello { name: "f".into(), roles: vec![], listen_port: 1, mesh_id: None, version: 0 }
}

/// A fixed session (the receiving side) so records can be opened.
fn session() -> &'static lifeboat_protocol::handshake::Session {
    static S: OnceLock<lifeboat_protocol::handshake::Session> = OnceLock::new();
    S.get_or_init(|| {
        let a = StaticKeypair::generate([1; 32]);
        let b = StaticKeypair::generate([2; 32]);
        let psk = [9; 32];
        let (mut i, mut m1) = Initiator::start(&a, &psk, b"p", hello(), [3; 32]).unwrap();
        let mut r = Responder::new(&b, b"p", [4; 32]).unwrap();
        let req = r.read_request(&take_record(&mut m1).unwrap().unwrap()).unwrap();
        let v = negotiate(req.min_version, req.max_version).unwrap();
        let mut m2 = r.respond(&psk, &Hello { version: v, ..hello() }).unwrap();
        i.read_response(&take_record(&mut m2).unwrap().unwrap()).unwrap();
        let (mut m3, _si) = i.finish().unwrap();
        r.finish(&take_record(&mut m3).unwrap().unwrap()).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = decode_body(data);
    let mut o = FrameOpener::new(session().transport.clone(), 0, 1).unwrap();
    o.push(data);
    while let Ok(Some(_)) = o.poll_frame() {}
    let b = StaticKeypair::generate([2; 32]);
    let mut r = Responder::new(&b, b"p", [5; 32]).unwrap();
    let mut buf = data.to_vec();
    if let Ok(Some(rec)) = take_record(&mut buf) {
        let _ = r.read_request(&rec);
    }
});
