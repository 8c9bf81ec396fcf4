//! The daemon's background tasks, one room per concern. Each task only observes (the
//! kernel, the backends, the maps through its own handles) and sends what it learnt to
//! the owner as an [`Observation`](super::command::Observation); each room also holds the
//! plain state the owner keeps for that concern and the rules that judge observations.
//!
//! Owns: nothing shared — every task talks to the owner through its channel. Must not
//! touch: the controller or the maps' contents (the owner's).

pub mod announce;
pub mod events;
pub mod health;
pub mod links;
pub mod neigh;
pub mod rates;
pub mod scan;
pub mod sources;

use tokio::task::JoinHandle;

/// A spawned task that is aborted when this is dropped: a task's life is its owner's.
#[derive(Debug)]
pub struct Task(JoinHandle<()>);

impl Task {
    pub fn spawn(f: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        Self(tokio::spawn(f))
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}
