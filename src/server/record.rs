//! The life of a request's intent record, from the moment the server starts (or adopts) it to
//! the moment the reply is out: one RAII type, `InFlight`, so no transport carries a completion
//! token back. A serving thread owns one record (`ThreadRecord`) that it reuses for each new
//! request; a request the transport delivers again after a worker's death adopts instead the
//! orphan record the dead worker left, with everything that attempt recorded.

use std::sync::atomic::Ordering;

use super::Server;
use crate::fuse::abi;
use crate::state::intent::Intent;

/// How a request's record is keyed, as its transport decides: a key never shared by two
/// requests in flight, and whether the request may be a redelivery of one a dead worker had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordKey {
    pub id: u64,
    /// FUSE: the kernel re-sent it (bit 63 of the unique). Virtqueue: a fresh worker replays a
    /// head in flight. Then the orphan record with this id, if any, is adopted.
    pub redelivered: bool,
}

impl RecordKey {
    /// A /dev/fuse request's key: its unique without the resend bit (the kernel never reuses a
    /// unique within a connection).
    pub fn fuse(unique: u64) -> RecordKey {
        RecordKey { id: unique & !abi::UNIQUE_RESEND, redelivered: unique & abi::UNIQUE_RESEND != 0 }
    }
}

/// A serving thread's own intent record (none when recovery is off).
#[derive(Debug)]
pub struct ThreadRecord(Option<u32>);

/// A request's hold on its record. Dropping it, once the reply is out, frees the record: a
/// thread's own becomes free for its next request, an adopted orphan's goes back to the pool.
pub(super) struct InFlight<'s> {
    server: &'s Server,
    record: Option<(u32, bool)>,
    intent: Intent,
}

impl Server {
    /// The record a new serving thread will use for its requests.
    pub fn thread_record(&self) -> ThreadRecord {
        ThreadRecord(if self.recovery { self.state.records.claim() } else { None })
    }

    /// Gives back the record of a thread that stops serving.
    pub(super) fn release_thread_record(&self, r: ThreadRecord) {
        if let Some(i) = r.0 {
            self.state.records.release(i);
        }
    }

    /// Frees the records of requests a dead worker left that its transport will not deliver
    /// again, now that it has delivered all that will come back. Returns how many.
    pub fn drop_orphans(&self) -> usize {
        self.state.records.drop_all_orphans()
    }

    /// A request in flight at two worker deaths is answered EIO and dropped from replay, after
    /// giving back the lookups and handle its attempts took (the guest never saw them).
    pub(super) fn abandon(&self, intent: Intent) {
        for nodeid in intent.raised().into_iter().rev() {
            self.state.inodes.unraise(nodeid, intent);
        }
        let fh = intent.handle();
        if fh != 0 {
            self.fs.abandon_handle(fh);
        }
    }
}

impl<'s> InFlight<'s> {
    /// A request answered without a record (malformed, or before INIT).
    pub(super) fn untracked(server: &'s Server) -> InFlight<'s> {
        InFlight { server, record: None, intent: Intent::none() }
    }

    /// Picks the record for request `h`: the orphan a dead worker left for it when it is
    /// redelivered, otherwise the thread's own, started afresh.
    pub(super) fn start(server: &'s Server, h: &abi::InHeader, key: RecordKey, thread: &ThreadRecord) -> InFlight<'s> {
        let Some(own) = thread.0 else { return InFlight::untracked(server) };
        let state = &server.state;
        let records = &state.records;
        if key.redelivered
            && let Some(i) = records.adopt(key.id, state.worker_gen())
        {
            let intent = Intent::new(records.get(i), true);
            tracing::debug!(unique = h.unique, opcode = h.opcode, step = intent.step(), "replaying");
            return InFlight { server, record: Some((i, true)), intent };
        }
        records.get(own).start(key.id, h.opcode, h.nodeid, state.worker_gen());
        InFlight { server, record: Some((own, false)), intent: Intent::new(records.get(own), false) }
    }

    pub(super) fn intent(&self) -> Intent {
        self.intent
    }

    /// Whether this request was in flight at two counted worker deaths: it is answered EIO
    /// rather than given a third chance to kill a worker.
    pub(super) fn is_poisoned(&self) -> bool {
        let deaths = self.intent.record().map_or(0, |r| r.deaths.load(Ordering::Relaxed));
        if self.intent.is_replay() && deaths >= 2 {
            let r = self.intent.record().expect("a replay has a record");
            let (unique, opcode) = (r.unique.load(Ordering::Relaxed), r.opcode.load(Ordering::Relaxed));
            tracing::error!(unique, opcode, deaths, "request was in flight at {deaths} worker deaths: answering EIO");
            return true;
        }
        false
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let server = self.server;
        // Only a supervisor reads it (to tell a crash loop from progress).
        if server.recovery {
            server.state.region.header().served.fetch_add(1, Ordering::Relaxed);
        }
        if let Some((i, adopted)) = self.record {
            server.state.records.get(i).clear();
            if adopted {
                server.state.records.release(i);
            }
        }
    }
}
