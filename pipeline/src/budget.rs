//! A budget in bytes shared by the tasks of one stream, so memory is bounded
//! by configuration and not by the size of what flows through.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `limit` bytes reserved at once. A reservation larger than the
/// whole budget is clamped to it (it then waits for everything else to be
/// released) rather than waiting forever; an empty one still costs a byte,
/// so every item is ordered by the budget.
///
/// Cloning shares the budget. [`ByteBudget::close`] makes every pending and
/// future reservation fail: how a failing consumer stops its producer.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    limit: usize,
}

/// A reservation; the bytes go back to the budget when it is dropped.
#[derive(Debug)]
pub struct Reserved(OwnedSemaphorePermit);

impl Reserved {
    fn new(permit: OwnedSemaphorePermit) -> Reserved {
        crate::counters::reserved(permit.num_permits() as u32);
        Reserved(permit)
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        crate::counters::released(self.0.num_permits() as u32);
    }
}

/// The budget was closed: whoever closed it has the error that matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetClosed;

impl ByteBudget {
    /// A budget of `limit` bytes (at least one byte, at most `u32::MAX`).
    pub fn new(limit: usize) -> ByteBudget {
        let limit = limit.clamp(1, u32::MAX as usize);
        ByteBudget {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// What reserving `bytes` actually takes from the budget.
    pub fn cost(&self, bytes: usize) -> u32 {
        bytes.clamp(1, self.limit) as u32
    }

    /// Waits until `bytes` (clamped, see [`ByteBudget::cost`]) are free and takes them.
    pub async fn reserve(&self, bytes: usize) -> Result<Reserved, BudgetClosed> {
        Arc::clone(&self.permits)
            .acquire_many_owned(self.cost(bytes))
            .await
            .map(Reserved::new)
            .map_err(|_| BudgetClosed)
    }

    /// Fails every waiting and future reservation.
    pub fn close(&self) {
        self.permits.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_are_clamped_to_the_budget() {
        let b = ByteBudget::new(100);
        assert_eq!(b.cost(0), 1);
        assert_eq!(b.cost(40), 40);
        assert_eq!(b.cost(1_000), 100);
        assert_eq!(ByteBudget::new(0).limit(), 1);
    }

    #[tokio::test]
    async fn a_reservation_waits_for_bytes_to_come_back_and_close_stops_it() {
        let b = ByteBudget::new(100);
        let first = b.reserve(80).await.unwrap();
        let waiting = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(50).await.map(drop) })
        };
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "50 bytes cannot fit beside 80 of 100"
        );
        drop(first);
        assert_eq!(waiting.await.unwrap(), Ok(()));

        let held = b.reserve(100).await.unwrap();
        let blocked = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(1).await.map(drop) })
        };
        b.close();
        assert_eq!(blocked.await.unwrap(), Err(BudgetClosed));
        drop(held);
        assert!(b.reserve(1).await.is_err(), "a closed budget stays closed");
    }
}
