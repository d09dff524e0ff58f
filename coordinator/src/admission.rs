//! Open-map-run admission control: at most `limit` runs open, the rest wait in FIFO order.
//!
//! Step Functions holds 1,000 open map runs per account and queues further `MapRunStarted`
//! events in a backlog. fleetmap does the same with exact, not approximate, numbers: a run
//! is "open" from admission until it reaches a terminal state.

use std::collections::{HashSet, VecDeque};

use crate::run::RunId;

/// Step Functions' hard limit of open map runs per account.
pub const DEFAULT_OPEN_MAP_RUN_LIMIT: usize = 1_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The run may open now.
    Open,
    /// The run waits; `position` is 1-based in the backlog.
    Backlogged { position: usize },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct AdmissionControl {
    limit: usize,
    open: HashSet<RunId>,
    backlog: VecDeque<RunId>,
}

impl AdmissionControl {
    pub fn new(limit: usize) -> Self {
        AdmissionControl {
            limit: limit.max(1),
            open: HashSet::new(),
            backlog: VecDeque::new(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Waiting runs, first to open first.
    pub fn backlog(&self) -> impl Iterator<Item = &RunId> {
        self.backlog.iter()
    }

    /// 1-based backlog position of a waiting run.
    pub fn position(&self, run: &RunId) -> Option<usize> {
        self.backlog.iter().position(|r| r == run).map(|i| i + 1)
    }

    /// Asks to open `run`. Nothing jumps the backlog: if anyone is waiting, so does `run`.
    pub fn request(&mut self, run: RunId) -> Admission {
        if self.open.contains(&run) {
            return Admission::Open;
        }
        if let Some(i) = self.backlog.iter().position(|r| *r == run) {
            return Admission::Backlogged { position: i + 1 };
        }
        if self.backlog.is_empty() && self.open.len() < self.limit {
            self.open.insert(run);
            Admission::Open
        } else {
            self.backlog.push_back(run);
            Admission::Backlogged {
                position: self.backlog.len(),
            }
        }
    }

    /// Closes `run` (or drops it from the backlog) and returns the runs that open as a
    /// result, in FIFO order.
    pub fn release(&mut self, run: &RunId) -> Vec<RunId> {
        if !self.open.remove(run) {
            self.backlog.retain(|r| r != run);
        }
        self.fill()
    }

    /// Changes the limit; raising it opens waiting runs (returned), lowering it lets open
    /// runs finish and opens nothing until the count is below the new limit.
    pub fn set_limit(&mut self, limit: usize) -> Vec<RunId> {
        self.limit = limit.max(1);
        self.fill()
    }

    fn fill(&mut self) -> Vec<RunId> {
        let mut opened = Vec::new();
        while self.open.len() < self.limit {
            let Some(next) = self.backlog.pop_front() else {
                break;
            };
            self.open.insert(next.clone());
            opened.push(next);
        }
        opened
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> RunId {
        RunId(format!("run-{i}"))
    }

    #[test]
    fn runs_beyond_the_limit_wait_and_open_in_fifo_order() {
        let mut a = AdmissionControl::new(3);
        for i in 0..3 {
            assert_eq!(a.request(id(i)), Admission::Open);
        }
        for i in 3..10 {
            assert_eq!(a.request(id(i)), Admission::Backlogged { position: i - 2 });
        }
        assert_eq!((a.open_count(), a.backlog_len()), (3, 7));
        assert_eq!(a.release(&id(1)), vec![id(3)]);
        assert_eq!(a.release(&id(0)), vec![id(4)]);
        assert_eq!((a.open_count(), a.backlog_len()), (3, 5));
    }

    #[test]
    fn open_count_never_exceeds_the_limit() {
        let mut a = AdmissionControl::new(2);
        let mut opened: Vec<RunId> = Vec::new();
        for i in 0..50 {
            if a.request(id(i)) == Admission::Open {
                opened.push(id(i));
            }
            assert!(a.open_count() <= 2);
        }
        let mut order = opened.clone();
        while let Some(r) = opened.pop() {
            let next = a.release(&r);
            assert!(a.open_count() <= 2);
            order.extend(next.iter().cloned());
            opened.extend(next);
        }
        assert_eq!(order, (0..50).map(id).collect::<Vec<_>>());
        assert_eq!((a.open_count(), a.backlog_len()), (0, 0));
    }

    #[test]
    fn releasing_a_backlogged_run_removes_it() {
        let mut a = AdmissionControl::new(1);
        a.request(id(0));
        a.request(id(1));
        a.request(id(2));
        assert!(a.release(&id(1)).is_empty());
        assert_eq!(a.release(&id(0)), vec![id(2)]);
    }

    #[test]
    fn raising_the_limit_opens_waiting_runs() {
        let mut a = AdmissionControl::new(1);
        for i in 0..4 {
            a.request(id(i));
        }
        assert_eq!(a.set_limit(3), vec![id(1), id(2)]);
        assert_eq!(a.set_limit(1), vec![]);
        assert_eq!(a.open_count(), 3);
    }

    #[test]
    fn repeated_requests_are_idempotent() {
        let mut a = AdmissionControl::new(1);
        assert_eq!(a.request(id(0)), Admission::Open);
        assert_eq!(a.request(id(0)), Admission::Open);
        assert_eq!(a.request(id(1)), Admission::Backlogged { position: 1 });
        assert_eq!(a.request(id(1)), Admission::Backlogged { position: 1 });
        assert_eq!(a.backlog_len(), 1);
    }
}
