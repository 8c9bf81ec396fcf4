//! The data plane's rare events: waits for the program's ring buffer to have records and
//! hands them to aya-log's reader, which writes them to the daemon's log at debug level
//! (dataplane::events says what and how).
//!
//! Owns: the reader (taken at start-up, before the program was attached). Must not touch
//! the owner or the maps: it only logs.

use log::warn;
use tokio::io::{Interest, unix::AsyncFd};

use super::Task;
use crate::dataplane::events::EventReader;

/// Reads records as they come, for the daemon's life.
pub fn spawn(reader: EventReader) -> Task {
    Task::spawn(async move {
        // SAFETY: the ring buffer's descriptor is owned by `reader`, which the AsyncFd
        // owns: it stays open and the same for the AsyncFd's whole life.
        let mut fd = match unsafe { AsyncFd::register_with_interest(reader, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                warn!("the data plane's events will not be logged: polling their ring buffer: {e}");
                return;
            }
        };
        loop {
            let mut ready = match fd.readable_mut().await {
                Ok(r) => r,
                Err(e) => {
                    warn!("the data plane's events are no longer logged: {e}");
                    return;
                }
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    })
}
