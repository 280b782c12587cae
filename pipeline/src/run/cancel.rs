//! Stopping a run: one signal shared by every task of the run.

use tokio::sync::watch;

/// A cancellation signal shared by a run's tasks. Cancelling drops the load
/// mid-flight (the target keeps what it had) and aborts a running Snowflake
/// query on the server.
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

/// The side that cancels.
#[derive(Debug)]
pub struct Canceller(watch::Sender<bool>);

impl Canceller {
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

impl Cancel {
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = watch::channel(false);
        (Canceller(tx), Cancel(rx))
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once cancelled; never, if the canceller is gone without cancelling.
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        loop {
            if *rx.borrow_and_update() {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

impl Default for Cancel {
    /// A signal that never fires.
    fn default() -> Self {
        Cancel(watch::channel(false).1)
    }
}
