//! A single-value channel whose receiver is a future: how a wgpu callback (`map_async`,
//! `on_submitted_work_done`) hands its result to code that awaits it. On the web the browser
//! runs the callback from its event loop and wakes the awaiting task; natively a blocking
//! `device.poll` runs it first and the receiver is ready when first polled.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

struct Slot<T> {
    value: Option<T>,
    /// The sender is gone: no value will come unless one is already here.
    closed: bool,
    waker: Option<Waker>,
}

/// The sending half: [`Sender::send`] once, or drop it to close the channel.
pub(crate) struct Sender<T>(Arc<Mutex<Slot<T>>>);

/// The receiving half: resolves to the sent value, or to `None` if the sender was dropped
/// without sending.
pub(crate) struct Receiver<T>(Arc<Mutex<Slot<T>>>);

/// A fresh channel.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        closed: false,
        waker: None,
    }));
    (Sender(slot.clone()), Receiver(slot))
}

impl<T> Sender<T> {
    /// Hand `value` to the receiver and wake it.
    pub(crate) fn send(self, value: T) {
        if let Ok(mut slot) = self.0.lock() {
            slot.value = Some(value);
        }
        // Dropping `self` now wakes the receiver.
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = match self.0.lock() {
            Ok(mut slot) => {
                slot.closed = true;
                slot.waker.take()
            }
            Err(_) => None,
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Future for Receiver<T> {
    type Output = Option<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let Ok(mut slot) = self.0.lock() else {
            return Poll::Ready(None);
        };
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_value_arrives_and_a_dropped_sender_closes() {
        let (tx, rx) = channel();
        tx.send(7);
        assert_eq!(pollster::block_on(rx), Some(7));
        let (tx, rx) = channel::<u8>();
        drop(tx);
        assert_eq!(pollster::block_on(rx), None);
    }

    /// The receiver waits for a value sent later from another thread (as the browser's event
    /// loop does on the web).
    #[test]
    fn a_pending_receiver_is_woken() {
        let (tx, rx) = channel();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            tx.send("done");
        });
        assert_eq!(pollster::block_on(rx), Some("done"));
        sender.join().unwrap();
    }
}
