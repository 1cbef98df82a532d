//! Requests that may wait indefinitely (SETLKW, with `-o posix_lock`): each runs on a thread of
//! its own, so waiting locks can never occupy every serving thread (nor, over a virtqueue, hold
//! up the unlock behind them on the same queue). INTERRUPT wakes such a thread with a signal.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::{Delivery, Exchange, Server};
use crate::fuse::{ReplyBuf, Request, abi};
use crate::sys::process;

/// The signal that wakes a thread waiting in a blocking lock (its handler does nothing; it is
/// installed without SA_RESTART, so the wait returns EINTR).
pub const WAKE_SIGNAL: i32 = libc::SIGUSR1;

/// Installs the no-op handler for `WAKE_SIGNAL` (once per process, before serving).
pub fn install_wake_handler() {
    process::install_interrupting_handler(WAKE_SIGNAL);
}

/// A blocking request between being read and its answer.
enum Waiter {
    /// Read, its thread not yet waiting; `interrupted` if an INTERRUPT came in the meantime.
    Starting { interrupted: bool },
    /// Waiting on this thread.
    Waiting(libc::pthread_t),
}

/// Blocking requests by FUSE unique (without the resend bit): INTERRUPT names them so.
#[derive(Default)]
pub(super) struct Waiters(Mutex<WaiterTable>);

#[derive(Default)]
struct WaiterTable {
    waiting: HashMap<u64, Waiter>,
    /// INTERRUPTs for requests not registered (yet): another serving thread can read the
    /// INTERRUPT before the thread that read the request registers it. The newest few are kept
    /// (most are for requests that finish promptly and are never registered).
    early: VecDeque<u64>,
}

/// INTERRUPTs kept for requests not registered yet.
const EARLY_INTERRUPTS: usize = 64;
/// How many times an INTERRUPT signals a waiting thread, a millisecond apart, before it gives up.
const WAKE_TRIES: usize = 100;

/// A blocking request's unique id as sent, and its waiter key (without the resend bit).
fn waiter_key(msg: &[u8]) -> (u64, u64) {
    let unique = Request::header_of(msg).map_or(0, |h| h.unique);
    (unique, unique & !abi::UNIQUE_RESEND)
}

impl Waiters {
    /// INTERRUPT: wakes the thread waiting on request `unique` (its lock call returns EINTR,
    /// which becomes its reply), or marks it interrupted if its thread is not waiting yet. A
    /// signal that lands between the thread's registering and its entering the lock call would
    /// be lost, so it is sent again (every millisecond, for up to `WAKE_TRIES`) until the thread
    /// is gone from the table.
    pub(super) fn interrupt(&self, unique: u64) {
        let key = unique & !abi::UNIQUE_RESEND;
        for _ in 0..WAKE_TRIES {
            let mut table = self.0.lock().unwrap();
            match table.waiting.get_mut(&key) {
                // SAFETY: the thread is registered, so it has not exited (see `Server::wait_on`).
                Some(Waiter::Waiting(thread)) => unsafe { process::signal_thread(*thread, WAKE_SIGNAL) },
                Some(Waiter::Starting { interrupted }) => return *interrupted = true,
                None => {
                    if table.early.len() == EARLY_INTERRUPTS {
                        table.early.pop_front();
                    }
                    return table.early.push_back(key);
                }
            }
            drop(table);
            std::thread::sleep(std::time::Duration::from_millis(1));
            if !matches!(self.0.lock().unwrap().waiting.get(&key), Some(Waiter::Waiting(_))) {
                return;
            }
        }
        tracing::warn!(unique, "a blocking lock did not wake on its INTERRUPT");
    }

    /// Registers a blocking request as read (interrupted already if its INTERRUPT came first).
    fn register(&self, key: u64) {
        let mut table = self.0.lock().unwrap();
        let early = table.early.iter().position(|k| *k == key);
        let interrupted = early.and_then(|i| table.early.remove(i)).is_some();
        table.waiting.insert(key, Waiter::Starting { interrupted });
    }

    fn remove(&self, key: u64) {
        self.0.lock().unwrap().waiting.remove(&key);
    }
}

/// Whether `msg` may wait indefinitely (SETLKW): its transport serves it with
/// `Server::spawn_blocking`.
pub fn blocks(msg: &[u8]) -> bool {
    Request::header_of(msg).is_ok_and(|h| h.opcode == abi::Opcode::Setlkw as u32)
}

impl Server {
    /// Serves a request that may wait indefinitely (see `blocks`) on a thread of its own, with
    /// a record of that thread's own, replying through `exchange` there. A crash while it waits
    /// leaves the request to its transport's redelivery: the next worker waits again. Gives the
    /// exchange back if no thread could be started: the caller then serves it itself.
    pub fn spawn_blocking<E>(self: &Arc<Self>, exchange: E, delivery: Delivery) -> Result<(), E>
    where
        E: Exchange<Sent = ()> + Send + 'static,
    {
        // Noted as read before the thread starts, so an INTERRUPT arriving before it waits is
        // kept for it rather than lost.
        let (_, key) = waiter_key(exchange.request());
        self.waiters.register(key);
        let server = self.clone();
        let (tx, rx) = std::sync::mpsc::channel::<E>();
        let spawned = std::thread::Builder::new().name("lock-wait".into()).spawn(move || {
            let Ok(mut exchange) = rx.recv() else { return };
            let record = server.thread_record();
            let mut out = ReplyBuf::new();
            server.wait_on(&mut exchange, delivery, &record, &mut out);
            server.release_thread_record(record);
        });
        match spawned {
            Ok(_) => {
                tx.send(exchange).expect("the waiter thread takes its exchange");
                Ok(())
            }
            Err(e) => {
                tracing::error!("cannot start a thread for a blocking lock, waiting in a serving thread: {e}");
                self.waiters.remove(key);
                Err(exchange)
            }
        }
    }

    /// Runs a blocking request on the calling thread, registered so that an INTERRUPT for it
    /// can wake it.
    fn wait_on<E: Exchange<Sent = ()>>(
        &self,
        exchange: &mut E,
        delivery: Delivery,
        record: &super::ThreadRecord,
        out: &mut ReplyBuf,
    ) {
        let (unique, key) = waiter_key(exchange.request());
        {
            let mut table = self.waiters.0.lock().unwrap();
            if let Some(Waiter::Starting { interrupted: true }) = table.waiting.get(&key) {
                table.waiting.remove(&key);
                drop(table);
                out.clear();
                return exchange.reply(Some(out.finish_err(unique, libc::EINTR)));
            }
            table.waiting.insert(key, Waiter::Waiting(process::thread_self()));
        }
        self.serve(exchange, delivery, record, out);
        // Removed before this thread can exit, under the lock `interrupt` signals under: a wake
        // signal never targets a thread that is gone.
        self.waiters.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interrupted(w: &Waiters, key: u64) -> Option<bool> {
        match w.0.lock().unwrap().waiting.get(&key) {
            Some(Waiter::Starting { interrupted }) => Some(*interrupted),
            _ => None,
        }
    }

    #[test]
    fn test_waiters_interrupt_read_before_its_request_is_kept_for_it() {
        let w = Waiters::default();
        w.interrupt(10 | abi::UNIQUE_RESEND);
        w.register(10);
        assert_eq!(interrupted(&w, 10), Some(true), "the INTERRUPT read first still counts");
        w.register(12);
        assert_eq!(interrupted(&w, 12), Some(false));
        w.interrupt(12);
        assert_eq!(interrupted(&w, 12), Some(true));
    }

    #[test]
    fn test_waiters_early_interrupts_are_bounded() {
        let w = Waiters::default();
        for unique in 0..10 * EARLY_INTERRUPTS as u64 {
            w.interrupt(unique);
        }
        assert_eq!(w.0.lock().unwrap().early.len(), EARLY_INTERRUPTS);
        w.register(0);
        assert_eq!(interrupted(&w, 0), Some(false), "the oldest were let go");
    }
}
