//! Bounded queues between pipeline threads, each with an explicit overflow policy.
//!
//! * [`FrameQueue`] (raw frames, capture → encode): drop the oldest frame, so the encoder always
//!   works on the newest picture and latency stays bounded.
//! * [`PacketQueue`] (encoded packets, encode → one output): never drop a frame another frame
//!   references. When over budget, incoming non-key video is dropped from that point until the
//!   next keyframe, and the encoder is asked for one. Audio packets are never dropped (and do not
//!   count against the packet budget): a gap in audio is audible, a dropped video frame barely.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::encode::EncodedPacket;

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

impl<T> Inner<T> {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                closed: false,
            }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A poisoned lock only means another thread panicked mid-push; the deque is still valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop_timeout(&self, timeout: Duration) -> Pop<T> {
        let mut st = self.lock();
        loop {
            if let Some(item) = st.items.pop_front() {
                return Pop::Item(item);
            }
            if st.closed {
                return Pop::Closed;
            }
            let (guard, res) = self
                .ready
                .wait_timeout(st, timeout)
                .unwrap_or_else(|p| p.into_inner());
            st = guard;
            if res.timed_out() && st.items.is_empty() && !st.closed {
                return Pop::Empty;
            }
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Result of a blocking pop.
pub enum Pop<T> {
    Item(T),
    /// Timed out with nothing queued.
    Empty,
    /// Closed by the producer and drained.
    Closed,
}

/// Raw-frame queue: drop-oldest.
pub struct FrameQueue<T>(Arc<Inner<T>>);

impl<T> Clone for FrameQueue<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> FrameQueue<T> {
    pub fn new(capacity: usize) -> Self {
        Self(Arc::new(Inner::new(capacity)))
    }

    /// Push, evicting the oldest item when full. Returns true when something was evicted.
    pub fn push(&self, item: T) -> bool {
        let mut st = self.0.lock();
        let evicted = if st.items.len() >= self.0.capacity {
            st.items.pop_front();
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        };
        st.items.push_back(item);
        drop(st);
        self.0.ready.notify_one();
        evicted
    }

    pub fn pop_timeout(&self, timeout: Duration) -> Pop<T> {
        self.0.pop_timeout(timeout)
    }

    pub fn close(&self) {
        self.0.close()
    }

    pub fn len(&self) -> usize {
        self.0.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

/// What a [`PacketQueue`] did with a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Dropped; the caller should ask the encoder for a keyframe when `want_keyframe`.
    Dropped {
        want_keyframe: bool,
    },
    /// The queue was over budget when a keyframe arrived: everything queued was discarded
    /// (nothing after a keyframe references what came before it) and the keyframe queued.
    Flushed {
        discarded: usize,
    },
}

struct PacketState {
    dropping_until_key: bool,
}

/// Encoded-packet queue for one output, bounded by packet count and by buffered media duration.
pub struct PacketQueue {
    inner: Arc<Inner<Arc<EncodedPacket>>>,
    max_duration_us: i64,
    policy: Arc<Mutex<PacketState>>,
    /// Threads that push (video encoder, audio thread); the queue closes when all have closed.
    producers: Arc<AtomicUsize>,
}

impl Clone for PacketQueue {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_duration_us: self.max_duration_us,
            policy: self.policy.clone(),
            producers: self.producers.clone(),
        }
    }
}

impl PacketQueue {
    pub fn new(max_packets: usize, max_duration: Duration) -> Self {
        Self {
            inner: Arc::new(Inner::new(max_packets)),
            max_duration_us: max_duration.as_micros() as i64,
            policy: Arc::new(Mutex::new(PacketState {
                dropping_until_key: false,
            })),
            producers: Arc::new(AtomicUsize::new(1)),
        }
    }

    /// One more thread will push (and call `close` when done).
    pub fn add_producer(&self) {
        self.producers.fetch_add(1, Ordering::SeqCst);
    }

    fn over_budget(&self, items: &VecDeque<Arc<EncodedPacket>>) -> bool {
        if items.iter().filter(|p| !p.is_audio()).count() >= self.inner.capacity {
            return true;
        }
        match (items.front(), items.back()) {
            (Some(a), Some(b)) => b.dts_us - a.dts_us >= self.max_duration_us,
            _ => false,
        }
    }

    pub fn push(&self, pkt: Arc<EncodedPacket>) -> PushOutcome {
        let mut policy = self.policy.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.inner.lock();
        let outcome = if pkt.is_audio() {
            PushOutcome::Queued
        } else if pkt.keyframe {
            policy.dropping_until_key = false;
            if self.over_budget(&st.items) {
                let before = st.items.len();
                st.items.retain(|p| p.is_audio());
                let discarded = before - st.items.len();
                self.inner
                    .dropped
                    .fetch_add(discarded as u64, Ordering::Relaxed);
                PushOutcome::Flushed { discarded }
            } else {
                PushOutcome::Queued
            }
        } else if policy.dropping_until_key {
            PushOutcome::Dropped {
                want_keyframe: false,
            }
        } else if self.over_budget(&st.items) {
            policy.dropping_until_key = true;
            PushOutcome::Dropped {
                want_keyframe: true,
            }
        } else {
            PushOutcome::Queued
        };
        match outcome {
            PushOutcome::Dropped { .. } => {
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                st.items.push_back(pkt);
                drop(st);
                self.inner.ready.notify_one();
            }
        }
        outcome
    }

    pub fn pop_timeout(&self, timeout: Duration) -> Pop<Arc<EncodedPacket>> {
        self.inner.pop_timeout(timeout)
    }

    /// The consumer is to finish now, whoever still produces (an output removed while running):
    /// it drains what is queued, then sees `Closed`.
    pub fn end(&self) {
        self.inner.close()
    }

    /// A producer is done; the consumer sees `Closed` once every producer is.
    pub fn close(&self) {
        if self.producers.fetch_sub(1, Ordering::SeqCst) <= 1 {
            self.inner.close()
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Media duration currently buffered.
    pub fn buffered_us(&self) -> i64 {
        let st = self.inner.lock();
        match (st.items.front(), st.items.back()) {
            (Some(a), Some(b)) => b.dts_us - a.dts_us,
            _ => 0,
        }
    }

    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(i: i64, key: bool) -> Arc<EncodedPacket> {
        Arc::new(EncodedPacket {
            data: Arc::from(vec![0u8; 4]),
            pts_us: i * 33_333,
            dts_us: i * 33_333,
            duration_us: 33_333,
            keyframe: key,
            media: crate::encode::MediaKind::Video,
            layer: 0,
        })
    }

    fn audio(i: i64) -> Arc<EncodedPacket> {
        Arc::new(EncodedPacket {
            data: Arc::from(vec![0u8; 4]),
            pts_us: i * 21_333,
            dts_us: i * 21_333,
            duration_us: 21_333,
            keyframe: false,
            media: crate::encode::MediaKind::Audio,
            layer: 0,
        })
    }

    #[test]
    fn audio_is_never_dropped_nor_flushed() {
        let q = PacketQueue::new(2, Duration::from_secs(10));
        q.push(pkt(0, true));
        for i in 0..10 {
            assert_eq!(q.push(audio(i)), PushOutcome::Queued);
        }
        // Audio does not count against the packet budget.
        assert_eq!(q.push(pkt(1, false)), PushOutcome::Queued);
        assert!(matches!(q.push(pkt(2, false)), PushOutcome::Dropped { .. }));
        assert_eq!(q.push(audio(10)), PushOutcome::Queued);
        // A keyframe on a full queue discards the video backlog only.
        assert_eq!(q.push(pkt(3, true)), PushOutcome::Flushed { discarded: 2 });
        assert_eq!(q.len(), 12);
    }

    #[test]
    fn closes_when_every_producer_closed() {
        let q = PacketQueue::new(2, Duration::from_secs(1));
        q.add_producer();
        q.close();
        assert!(matches!(
            q.pop_timeout(Duration::from_millis(1)),
            Pop::Empty
        ));
        q.close();
        assert!(matches!(
            q.pop_timeout(Duration::from_millis(1)),
            Pop::Closed
        ));
    }

    #[test]
    fn frame_queue_drops_oldest() {
        let q = FrameQueue::new(2);
        assert!(!q.push(1));
        assert!(!q.push(2));
        assert!(q.push(3));
        assert_eq!(q.dropped(), 1);
        match q.pop_timeout(Duration::from_millis(1)) {
            Pop::Item(v) => assert_eq!(v, 2),
            _ => panic!("expected item"),
        }
    }

    #[test]
    fn packet_queue_drops_until_next_keyframe() {
        let q = PacketQueue::new(3, Duration::from_secs(10));
        assert_eq!(q.push(pkt(0, true)), PushOutcome::Queued);
        assert_eq!(q.push(pkt(1, false)), PushOutcome::Queued);
        assert_eq!(q.push(pkt(2, false)), PushOutcome::Queued);
        // Full: the next non-key frame starts a drop run and asks for a keyframe once.
        assert_eq!(
            q.push(pkt(3, false)),
            PushOutcome::Dropped {
                want_keyframe: true
            }
        );
        // Space frees up, but frame 4 references dropped frame 3: it must be dropped too.
        let _ = q.pop_timeout(Duration::from_millis(1));
        assert_eq!(
            q.push(pkt(4, false)),
            PushOutcome::Dropped {
                want_keyframe: false
            }
        );
        assert_eq!(q.push(pkt(5, true)), PushOutcome::Queued);
        // Back to normal once there is room.
        let _ = q.pop_timeout(Duration::from_millis(1));
        assert_eq!(q.push(pkt(6, false)), PushOutcome::Queued);
        assert_eq!(q.dropped(), 2);
    }

    #[test]
    fn keyframe_on_full_queue_flushes_backlog() {
        let q = PacketQueue::new(2, Duration::from_secs(10));
        q.push(pkt(0, true));
        q.push(pkt(1, false));
        assert_eq!(q.push(pkt(2, true)), PushOutcome::Flushed { discarded: 2 });
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn duration_budget_counts() {
        let q = PacketQueue::new(100, Duration::from_millis(50));
        q.push(pkt(0, true));
        q.push(pkt(1, false));
        // 33 ms buffered < 50 ms: still accepted; then 66 ms ≥ 50 ms: over budget.
        assert_eq!(q.push(pkt(2, false)), PushOutcome::Queued);
        assert!(matches!(q.push(pkt(3, false)), PushOutcome::Dropped { .. }));
    }
}
