//! Tasks whose work ends with whoever waits for it.

use tokio::task::{JoinError, JoinHandle};

/// A spawned task aborted when its handle is dropped: work started ahead
/// of need (a result's chunk downloads, a table's first batch) stops when
/// the run that wanted it does, instead of running on detached.
pub(crate) struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub(crate) fn spawn<F>(future: F) -> AbortOnDrop<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        AbortOnDrop(tokio::spawn(future))
    }

    /// Waits for the task's output (an error if it panicked).
    pub(crate) async fn join(mut self) -> Result<T, JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::AbortOnDrop;

    #[tokio::test]
    async fn a_dropped_handle_stops_its_task_and_a_joined_one_gives_its_output() {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = AbortOnDrop::spawn(async move {
            // Holds `tx` until aborted: the receiver sees it dropped.
            let _tx = tx;
            std::future::pending::<()>().await
        });
        drop(task);
        assert!(rx.await.is_err(), "the task outlived its dropped handle");
        assert_eq!(AbortOnDrop::spawn(async { 7 }).join().await.ok(), Some(7));
    }
}
