//! One keyspace procedure of a service at a time, and equal requests
//! joined, so a flood of FLUSHDB or DBSIZE costs a couple of keyspace scans,
//! not one each.
//!
//! A run waits for the service's turn, then runs. While it waits it can be
//! joined: a FLUSH (or DBSIZE) that arrives meanwhile takes the same run's
//! answer instead of starting its own. A run that has started is never
//! joined: its SCAN may already have passed keys written after it began,
//! so a later FLUSH waits for the next run, which starts after it and so
//! deletes every key written before that FLUSH (SCAN returns every key
//! present from the start to the end of its iteration). A flood therefore
//! costs at most two runs at a time: the one running and the one every
//! later call joins.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::{watch, Semaphore};

use crate::backend::mux::BatchReply;
use crate::backend::BackendError;

/// Which requests may share one run's answer: the same kind, in the same
/// database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Joinable {
    /// FLUSHDB in this database (`None`: FLUSHALL, every database of the
    /// service), SYNC or ASYNC alike.
    Flush(Option<u32>),
    /// DBSIZE of this database.
    DbSize(u32),
}

/// The keyspace procedures of one service.
#[derive(Debug)]
pub struct ProcedureGate {
    /// One procedure of the service runs at a time.
    turn: Semaphore,
    /// Runs waiting for their turn, by what may join them; the sender
    /// publishes the run's answer.
    // A std Mutex is right here: the critical sections never await.
    waiting: Mutex<HashMap<Joinable, watch::Sender<Option<BatchReply>>>>,
}

impl Default for ProcedureGate {
    fn default() -> Self {
        ProcedureGate {
            turn: Semaphore::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

impl ProcedureGate {
    /// Runs `work` in the service's turn, or, when a run of the same
    /// `joinable` kind is waiting for its turn, takes that run's answer.
    /// `None` never joins (RANDOMKEY picks its own key).
    pub async fn run<W, F>(&self, joinable: Option<Joinable>, work: W) -> BatchReply
    where
        W: FnOnce() -> F,
        F: Future<Output = BatchReply>,
    {
        let Some(kind) = joinable else {
            let _turn = self.turn.acquire().await;
            return work().await;
        };
        let joined = {
            let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            match waiting.get(&kind) {
                Some(run) => Err(run.subscribe()),
                None => {
                    let (run, _) = watch::channel(None);
                    waiting.insert(kind, run.clone());
                    Ok(run)
                }
            }
        };
        let run = match joined {
            Ok(run) => run,
            Err(mut answer) => {
                let lost = || BackendError::ConnectionLost {
                    addr: "backend".into(),
                };
                return match answer.wait_for(Option::is_some).await {
                    Ok(reply) => reply.clone().unwrap_or_else(|| Err(lost())),
                    Err(_) => Err(lost()),
                };
            }
        };
        let _turn = self.turn.acquire().await;
        // Started: from now on a request of this kind waits for the next run.
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&kind);
        let reply = work().await;
        run.send_replace(Some(reply.clone()));
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn ok(text: &'static str) -> BatchReply {
        Ok(Bytes::from_static(text.as_bytes()).into())
    }

    #[tokio::test]
    async fn requests_arriving_while_one_runs_share_the_next_run() {
        let gate = Arc::new(ProcedureGate::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (gate, runs) = (gate.clone(), runs.clone());
            tokio::spawn(async move {
                gate.run(Some(Joinable::Flush(Some(0))), || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    let _ = released.await;
                    ok("+first\r\n")
                })
                .await
            })
        };
        while runs.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (0..10)
            .map(|_| {
                let (gate, runs) = (gate.clone(), runs.clone());
                tokio::spawn(async move {
                    gate.run(Some(Joinable::Flush(Some(0))), || async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        ok("+second\r\n")
                    })
                    .await
                })
            })
            .collect();
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the running one is never joined, the next waits"
        );
        let _ = release.send(());
        assert_eq!(first.await.unwrap(), ok("+first\r\n"));
        for call in later {
            assert_eq!(call.await.unwrap(), ok("+second\r\n"));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 2);
    }
}
