//! The round machine's inbox. Every session and timer sends its events into one queue, which the
//! driver empties in order. An event made from a participant's message holds one of its
//! session's [`SESSION_QUEUE`] permits until the machine has handled it. A session that sends
//! faster than the machine handles therefore stops reading (and gRPC flow control slows its
//! sender), and what is queued stays bounded: at most `SESSION_QUEUE` events per session, plus
//! one connect or disconnect per session and one expiry per running deadline.

use crate::round::Event;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Events of one session that may wait for the round machine at once.
pub(super) const SESSION_QUEUE: usize = 8;

/// An event, with the permit of the session it came from, if any.
pub(super) type Queued = (Event, Option<OwnedSemaphorePermit>);

/// The sending side of the inbox.
#[derive(Clone)]
pub(super) struct Events(mpsc::UnboundedSender<Queued>);

/// The inbox and its receiving end, for the driver.
pub(super) fn inbox() -> (Events, mpsc::UnboundedReceiver<Queued>) {
    let (sender, receiver) = mpsc::unbounded_channel();
    (Events(sender), receiver)
}

impl Events {
    /// Sends an event no participant message caused (a connection, a deadline, a stop). Once
    /// the driver is gone, there is no one to tell, and the event is dropped.
    pub(super) fn send(&self, event: Event) {
        let _ = self.0.send((event, None));
    }

    /// Sends an event made from a participant's message, holding `permit` until it is handled.
    pub(super) fn send_held(&self, event: Event, permit: OwnedSemaphorePermit) {
        let _ = self.0.send((event, Some(permit)));
    }
}

/// One session's permits.
pub(super) fn session_budget() -> Arc<Semaphore> {
    Arc::new(Semaphore::new(SESSION_QUEUE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_waits_once_its_events_fill_its_share_of_the_queue() {
        let (events, mut inbox) = inbox();
        let budget = session_budget();
        let stop = || Event::Stop {
            reason: "test".into(),
        };
        for _ in 0..SESSION_QUEUE {
            let permit = budget.clone().try_acquire_owned().unwrap();
            events.send_held(stop(), permit);
        }
        assert!(
            budget.clone().try_acquire_owned().is_err(),
            "a full share makes the session wait"
        );
        // Events without a permit are never held back.
        events.send(stop());
        let (_, permit) = inbox.recv().await.unwrap();
        drop(permit);
        assert!(
            budget.clone().try_acquire_owned().is_ok(),
            "handling one frees one"
        );
    }
}
