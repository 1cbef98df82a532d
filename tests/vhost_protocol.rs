//! phoenixfsd as a vhost-user-fs backend, driven by the test frontend (tests/vhost/frontend.rs)
//! over a real socket with memfd guest memory: the handshake QEMU performs, FUSE requests in
//! descriptor chains, several queues, EVENT_IDX on and off, and hostile chains.

use phoenixfsd::fuse::Op;
use phoenixfsd::fuse::abi::{self, EntryOut};
use zerocopy::FromBytes;

#[path = "vhost/backend.rs"]
mod backend;
#[path = "vhost/frontend.rs"]
mod frontend;

use backend::{Backend, call, init};
use frontend::Frontend;

#[test]
fn test_handshake_and_lookup_over_the_rings() {
    let b = Backend::start(&[]);
    std::fs::write(b.share.join("hello.txt"), b"hello").unwrap();
    let mut fe = Frontend::connect(b.socket(), 3, 128).unwrap_or_else(|e| panic!("handshake: {e}"));
    let out = init(&mut fe);
    assert_eq!((out.major, out.minor), (7, abi::KERNEL_MINOR_VERSION));
    for queue in [1, 2] {
        let (err, payload) = call(&mut fe, queue, 10 + queue as u64, abi::ROOT_ID, &Op::Lookup { name: c"hello.txt" });
        assert_eq!(err, 0, "LOOKUP on queue {queue}");
        let entry = EntryOut::read_from_bytes(&payload).unwrap();
        assert_eq!(entry.attr.size, 5);
    }
    let (err, _) = call(&mut fe, 1, 20, abi::ROOT_ID, &Op::Lookup { name: c"missing" });
    assert_eq!(err, -libc::ENOENT);
}
