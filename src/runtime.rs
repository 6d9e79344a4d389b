//! The plugin's one async runtime, shared by every element instance.
//!
//! Created on first use and kept for the life of the process (as gst-plugins-rs's elements keep
//! theirs): an application with a hundred `rtspsrc2` gets one set of worker threads, not a hundred.
//! The number of workers is the number of cores, at least 1 and at most 4, or the value of the
//! environment variable `LIVESTREAMING_RUNTIME_WORKERS` (read once, when the runtime starts).
//!
//! Work that stops with its owner is spawned into a [`TaskGroup`]: dropping the group aborts its
//! tasks without waiting, so an element's state change never blocks on the runtime.

use std::future::Future;
use std::sync::{LazyLock, Mutex};

use tokio::runtime::{Handle, Runtime};
use tokio::task::{AbortHandle, JoinHandle};

/// The environment variable that sets the number of worker threads.
pub const WORKERS_ENV: &str = "LIVESTREAMING_RUNTIME_WORKERS";

/// The default number of worker threads: one per core, at most 4.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4)
}

/// The number of worker threads for a value of [`WORKERS_ENV`] (unset or invalid: the default).
fn workers_from(value: Option<&str>) -> usize {
    match value.map(str::trim).map(str::parse::<usize>) {
        Some(Ok(n)) if (1..=256).contains(&n) => n,
        Some(_) => {
            log::warn!(
                "{WORKERS_ENV}={:?} is not a number of threads in 1..=256; using {}",
                value.unwrap_or_default(),
                default_workers()
            );
            default_workers()
        }
        None => default_workers(),
    }
}

static RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    let workers = workers_from(std::env::var(WORKERS_ENV).ok().as_deref());
    log::debug!("starting the shared runtime with {workers} worker threads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("livestreaming-rt")
        .enable_all()
        .build()
        .expect("the shared tokio runtime could not start");
    // The `log` filter follows GStreamer's debug thresholds (see src/logging.rs).
    crate::logging::follow_thresholds(runtime.handle());
    runtime
});

/// The shared runtime's handle (starting the runtime on first use).
pub fn handle() -> Handle {
    RUNTIME.handle().clone()
}

/// Tasks that end together: dropping the group (or [`TaskGroup::abort_all`]) aborts every task
/// still running, without waiting for them.
#[derive(Debug, Default)]
pub struct TaskGroup {
    tasks: Mutex<Vec<AbortHandle>>,
}

impl TaskGroup {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `future` on the shared runtime as a member of the group.
    pub fn spawn<F>(&self, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let task = RUNTIME.spawn(future);
        let mut tasks = self.tasks.lock().unwrap();
        // Forget the tasks that ended, so that a long-lived group does not grow.
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
        task
    }

    /// Aborts every task of the group. Returns at once; the tasks end at their next await.
    pub fn abort_all(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        self.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn worker_count_from_the_environment() {
        assert_eq!(workers_from(Some("3")), 3);
        assert_eq!(workers_from(Some(" 7 ")), 7);
        assert_eq!(workers_from(None), default_workers());
        assert_eq!(workers_from(Some("0")), default_workers());
        assert_eq!(workers_from(Some("many")), default_workers());
        assert_eq!(workers_from(Some("100000")), default_workers());
    }

    #[test]
    fn dropping_a_group_aborts_its_tasks_without_waiting() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let group = TaskGroup::new();
        let task = group.spawn(async move {
            // Holds the sender until aborted.
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        let start = std::time::Instant::now();
        drop(group);
        assert!(start.elapsed() < Duration::from_millis(100));
        // The sender goes away with the aborted task.
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
        assert!(handle().block_on(task).unwrap_err().is_cancelled());
    }

    #[test]
    fn every_caller_gets_the_same_runtime() {
        let a = handle().spawn(async { std::thread::current().name().map(String::from) });
        let name = handle().block_on(a).unwrap();
        assert_eq!(name.as_deref(), Some("livestreaming-rt"));
        assert_eq!(
            handle().metrics().num_workers(),
            RUNTIME.metrics().num_workers()
        );
    }
}
