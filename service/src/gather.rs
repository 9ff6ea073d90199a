//! Work of concurrent requests, gathered into one script call: the claims
//! (each request's with its key's rate limit) and the accepts. Each request
//! hands its work to a gatherer task, which takes all the work waiting at
//! that moment (no timer: it never waits for more) into one call, up to
//! [`MAX_GATHERED`] transactions (a request's work is never split), with at
//! most [`MAX_GATHER_CALLS_IN_FLIGHT`] calls at once, and at most
//! [`MAX_GATHER_QUEUE`] requests waiting. Alone, a request goes at once, by
//! itself; under load what comes while calls are in flight goes together in
//! the next one. A request of [`GATHER_BELOW`] transactions or more makes
//! its call by itself, without waiting for a place among the gathered calls
//! (its call is amortised already), with at most
//! [`MAX_ALONE_CALLS_IN_FLIGHT`] such calls at once. The call does for each
//! transaction exactly what a call of its own would (the same Lua function,
//! per id, in order).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::store::StoreError;

use crate::limits::{
    GATHER_BELOW, MAX_ALONE_CALLS_IN_FLIGHT, MAX_GATHERED, MAX_GATHER_CALLS_IN_FLIGHT,
    MAX_GATHER_QUEUE,
};

type Answer<A> = oneshot::Sender<Result<A, StoreError>>;

/// The work of the items of one call: one answer per item, in order.
type Call<I, A> = Arc<
    dyn Fn(Vec<I>) -> Pin<Box<dyn Future<Output = Vec<Result<A, StoreError>>> + Send>>
        + Send
        + Sync,
>;

/// Hands items of type `I` to the gatherer task, which answers each with an
/// `A`; cheap to clone.
pub(crate) struct Gatherer<I, A> {
    waiting: mpsc::Sender<(I, Answer<A>)>,
    call: Call<I, A>,
    size: fn(&I) -> usize,
    /// Places for the calls of large items, each by itself.
    alone: Arc<Semaphore>,
    metric: &'static str,
}

impl<I, A> Clone for Gatherer<I, A> {
    fn clone(&self) -> Self {
        Self {
            waiting: self.waiting.clone(),
            call: self.call.clone(),
            size: self.size,
            alone: self.alone.clone(),
            metric: self.metric,
        }
    }
}

impl<I: Send + 'static, A: Send + 'static> Gatherer<I, A> {
    /// Starts the gatherer task on the current tokio runtime; it ends once
    /// every handle is dropped. `call` does the work of the items gathered
    /// (one answer per item, in order); `size` is how many transactions an
    /// item holds; `metric` is the histogram of how many each call took.
    pub(crate) fn start<F, Fut>(metric: &'static str, size: fn(&I) -> usize, call: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<A, StoreError>>> + Send + 'static,
    {
        let call: Call<I, A> = Arc::new(move |items| Box::pin(call(items)));
        let gathering = call.clone();
        let (waiting, mut queue) = mpsc::channel::<(I, Answer<A>)>(MAX_GATHER_QUEUE);
        let calls = Arc::new(Semaphore::new(MAX_GATHER_CALLS_IN_FLIGHT));
        tokio::spawn(async move {
            while let Some(first) = queue.recv().await {
                // A place for the call first: what comes while every call
                // is in flight waits here and goes in this one.
                let Ok(place) = calls.clone().acquire_owned().await else {
                    return;
                };
                let mut taken = size(&first.0);
                let mut gathered = vec![first];
                while taken < MAX_GATHERED {
                    match queue.try_recv() {
                        Ok(next) => {
                            taken += size(&next.0);
                            gathered.push(next);
                        }
                        Err(_) => break,
                    }
                }
                metrics::histogram!(metric).record(taken as f64);
                let (items, answers): (Vec<I>, Vec<Answer<A>>) = gathered.into_iter().unzip();
                // The work in a task of its own: should it panic, its
                // requests are answered (their senders dropped) and the
                // gatherer goes on.
                let call = gathering.clone();
                tokio::spawn(async move {
                    answer_each(answers, call(items).await);
                    drop(place);
                });
            }
        });
        Self {
            waiting,
            call,
            size,
            alone: Arc::new(Semaphore::new(MAX_ALONE_CALLS_IN_FLIGHT)),
            metric,
        }
    }

    /// Does `item`'s work in the gatherer's next call, or in a call of its
    /// own at once when it holds [`GATHER_BELOW`] transactions or more.
    pub(crate) async fn run(&self, item: I) -> Result<A, StoreError> {
        let stopped = || StoreError::Unexpected("a gathered call stopped unanswered".into());
        let size = (self.size)(&item);
        if size >= GATHER_BELOW {
            let _place = self.alone.acquire().await.map_err(|_| stopped())?;
            metrics::histogram!(self.metric).record(size as f64);
            // In a task of its own, as a gathered call is: a panic is an
            // error for this request, never the end of the caller.
            let answers = tokio::spawn((self.call)(vec![item]))
                .await
                .map_err(|_| stopped())?;
            return one_per_item(1, answers)
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(stopped()));
        }
        let (answer, answered) = oneshot::channel();
        self.waiting
            .send((item, answer))
            .await
            .map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }
}

/// Sends each waiting request its answer (see [`one_per_item`]).
fn answer_each<A>(waiting: Vec<Answer<A>>, answers: Vec<Result<A, StoreError>>) {
    let answers = one_per_item(waiting.len(), answers);
    for (answer, value) in waiting.into_iter().zip(answers) {
        let _ = answer.send(value);
    }
}

/// A call's answers, one per item of its `items`; a wrong count of answers
/// is an error for all (never an answer shifted to another request).
fn one_per_item<A>(
    items: usize,
    answers: Vec<Result<A, StoreError>>,
) -> Vec<Result<A, StoreError>> {
    if answers.len() == items {
        return answers;
    }
    let e = StoreError::Unexpected(format!(
        "a gathered call had {} answers for {items} items",
        answers.len()
    ));
    (0..items).map(|_| Err(e.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items sent while a call is in flight go together in the next one,
    /// each answered with its own answer; a wrong count of answers is an
    /// error, not a shift; a call that panics answers its items with an
    /// error and the gatherer goes on.
    #[tokio::test]
    async fn waiting_items_go_together_and_each_gets_its_answer() {
        let (calls, mut seen) = mpsc::unbounded_channel::<Vec<u32>>();
        let gatherer = Gatherer::start(
            "test_gathered",
            |_| 1,
            move |items: Vec<u32>| {
                let calls = calls.clone();
                async move {
                    calls.send(items.clone()).unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    match items[0] {
                        0 => items
                            .iter()
                            .map(|_| Err(StoreError::Unexpected("down".into())))
                            .collect(),
                        100 => vec![Ok(1)],
                        200 => panic!("the work panicked"),
                        _ => items.iter().map(|i| Ok(i * 10)).collect(),
                    }
                }
            },
        );
        let many: Vec<_> = (1..=20).map(|i| gatherer.run(i)).collect();
        let answers = futures_util::future::join_all(many).await;
        let answers: Vec<u32> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, (1..=20).map(|i| i * 10).collect::<Vec<_>>());
        let mut sizes = Vec::new();
        while let Ok(items) = seen.try_recv() {
            sizes.push(items.len());
        }
        assert!(sizes.len() < 20, "some items went together: {sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 20);

        let failed = futures_util::future::join(gatherer.run(0), gatherer.run(0)).await;
        assert!(failed.0.is_err() && failed.1.is_err());
        let short = futures_util::future::join(gatherer.run(100), gatherer.run(100)).await;
        assert!(short.0.is_err() && short.1.is_err(), "{short:?}");
        assert!(
            gatherer.run(200).await.is_err(),
            "a panic answers its items"
        );
        assert_eq!(
            gatherer.run(3).await.unwrap(),
            30,
            "and the gatherer goes on"
        );
    }

    /// A request of `GATHER_BELOW` transactions or more makes its own call,
    /// never in one with others, even while other calls are waiting; a
    /// panic in it is an error for that request only.
    #[tokio::test]
    async fn a_large_item_goes_alone() {
        let (calls, mut seen) = mpsc::unbounded_channel::<Vec<usize>>();
        let gatherer = Gatherer::start(
            "test_gathered",
            |&size| size,
            move |items: Vec<usize>| {
                let calls = calls.clone();
                async move {
                    calls.send(items.clone()).unwrap();
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    if items[0] == GATHER_BELOW + 1 {
                        panic!("the work panicked");
                    }
                    items.iter().map(|&i| Ok(i)).collect()
                }
            },
        );
        let mut items: Vec<usize> = vec![1; 12];
        items.extend([GATHER_BELOW, GATHER_BELOW - 1, GATHER_BELOW]);
        let answers = futures_util::future::join_all(items.iter().map(|&i| gatherer.run(i))).await;
        let answers: Vec<usize> = answers.into_iter().map(Result::unwrap).collect();
        assert_eq!(answers, items);
        let mut calls = Vec::new();
        while let Ok(items) = seen.try_recv() {
            calls.push(items);
        }
        let alone = calls.iter().filter(|c| c == &&vec![GATHER_BELOW]).count();
        assert_eq!(alone, 2, "each large item in a call of its own: {calls:?}");
        assert!(
            calls
                .iter()
                .all(|c| c.len() == 1 || !c.contains(&GATHER_BELOW)),
            "{calls:?}"
        );
        assert!(gatherer.run(GATHER_BELOW + 1).await.is_err());
        assert_eq!(gatherer.run(GATHER_BELOW).await.unwrap(), GATHER_BELOW);
    }

    /// Large items' own calls are bounded too: never more than
    /// `MAX_ALONE_CALLS_IN_FLIGHT` at once, however many requests come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_items_own_calls_are_bounded() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (running.clone(), most.clone());
        let gatherer = Gatherer::start(
            "test_gathered",
            |&size| size,
            move |items: Vec<usize>| {
                let (running, most) = (r.clone(), m.clone());
                async move {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    items.iter().map(|&i| Ok(i)).collect()
                }
            },
        );
        let many = (0..3 * MAX_ALONE_CALLS_IN_FLIGHT).map(|_| gatherer.run(GATHER_BELOW));
        let answers = futures_util::future::join_all(many).await;
        assert!(answers
            .iter()
            .all(|a| a.as_ref().is_ok_and(|&n| n == GATHER_BELOW)));
        assert_eq!(most.load(Ordering::SeqCst), MAX_ALONE_CALLS_IN_FLIGHT);
    }
}
