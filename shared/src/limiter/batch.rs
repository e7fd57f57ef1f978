//! Group commit for limiter calls: requests that arrive while earlier calls are in flight are
//! sent together in the next one.
//!
//! Under light load every request goes out alone, at once. Under heavy load a call carries
//! everything that queued behind the calls in flight, so each request still costs one round
//! trip while the fixed cost of a script call is shared. Nothing waits on a timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::ports::{PortError, PortResult};

type Reply<R> = oneshot::Sender<PortResult<R>>;

/// Runs one batch: answers in the order of the requests, one each.
pub(crate) type BatchFn<Q, R> =
    Arc<dyn Fn(Vec<Q>) -> Pin<Box<dyn Future<Output = PortResult<Vec<R>>> + Send>> + Send + Sync>;

/// A queue in front of a batch call, served by a task of its own.
pub(crate) struct Batcher<Q, R> {
    queue: mpsc::UnboundedSender<(Q, Reply<R>)>,
}

impl<Q: Send + 'static, R: Send + 'static> Batcher<Q, R> {
    /// Start the task on the current runtime: at most `in_flight` calls at once, each with at
    /// most `max` requests. The task ends when the batcher is dropped.
    pub(crate) fn start(max: usize, in_flight: usize, run: BatchFn<Q, R>) -> Self {
        let (queue, mut incoming) = mpsc::unbounded_channel::<(Q, Reply<R>)>();
        let slots = Arc::new(Semaphore::new(in_flight.max(1)));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                    return;
                };
                let Some(first) = incoming.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < max.max(1) {
                    match incoming.try_recv() {
                        Ok(item) => batch.push(item),
                        Err(_) => break,
                    }
                }
                let run = Arc::clone(&run);
                tokio::spawn(async move {
                    let (requests, replies): (Vec<Q>, Vec<Reply<R>>) = batch.into_iter().unzip();
                    let expected = replies.len();
                    match run(requests).await {
                        Ok(answers) if answers.len() == expected => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                // A caller that gave up no longer needs its answer.
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Ok(_) => {
                            let e = PortError::Internal("limiter batch answered short".into());
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                        Err(e) => {
                            for reply in replies {
                                let _ = reply.send(Err(e.clone()));
                            }
                        }
                    }
                    drop(slot);
                });
            }
        });
        Self { queue }
    }

    /// Queue one request and wait for its answer.
    ///
    /// # Errors
    /// The batch call's error, shared by every request of that batch; [`PortError::Unavailable`]
    /// when the task has stopped (its runtime shut down).
    pub(crate) async fn call(&self, request: Q) -> PortResult<R> {
        let (reply, answer) = oneshot::channel();
        let stopped = || PortError::Unavailable("limiter batch task stopped".into());
        self.queue.send((request, reply)).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    fn recording(sizes: Arc<Mutex<Vec<usize>>>) -> BatchFn<u32, u32> {
        Arc::new(move |batch: Vec<u32>| {
            let sizes = Arc::clone(&sizes);
            Box::pin(async move {
                sizes.lock().unwrap().push(batch.len());
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(batch.into_iter().map(|n| n * 10).collect())
            })
        })
    }

    #[tokio::test]
    async fn a_lone_request_goes_out_alone_and_gets_its_own_answer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Batcher::start(16, 1, recording(Arc::clone(&sizes)));

        let answer = batcher.call(7).await.unwrap();

        assert_eq!(answer, 70);
        assert_eq!(*sizes.lock().unwrap(), vec![1]);
    }

    #[tokio::test]
    async fn requests_queued_behind_a_call_in_flight_share_the_next_call() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let batcher = Arc::new(Batcher::start(16, 1, recording(Arc::clone(&sizes))));

        let calls: Vec<_> = (0..20)
            .map(|n| {
                let batcher = Arc::clone(&batcher);
                tokio::spawn(async move { batcher.call(n).await.unwrap() })
            })
            .collect();
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }

        assert_eq!(answers, (0..20).map(|n| n * 10).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(sizes.len() < 20, "no request shared a call: {sizes:?}");
        assert!(
            sizes.iter().all(|&n| n <= 16),
            "a call went past the cap: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_request_it_carried() {
        let failing: BatchFn<u32, u32> = Arc::new(|_batch: Vec<u32>| {
            Box::pin(async { Err(PortError::Unavailable("redis down".into())) })
        });
        let batcher = Batcher::start(16, 1, failing);

        let answer = batcher.call(1).await;

        assert!(matches!(answer, Err(PortError::Unavailable(_))));
    }
}
