//! The shared trace: one global clock, the intervals in which workers held a projection, and
//! the faults the harness caused. The overlap check (G6) reads it, as Neos' race tracker reads
//! its Redis stream.
//!
//! A worker's interval opens when its catch-up returned rows (it holds the projection then)
//! and closes just before it sends COMMIT or ROLLBACK (it still holds it then). Both ends are
//! ticks of one atomic counter. With a working lock the next worker can only get rows after
//! that COMMIT, so after the closing tick: two intersecting intervals of one projection prove
//! that two transactions ran it at once.
//!
//! When a fault ends a transaction, the backend let go of the projection at some moment after
//! the fault was issued: the interval closes at the fault's tick when that comes first (never
//! before it opened), so that a fault cannot fake an overlap. The worker learns of the fault
//! only from its next statement, which may be the COMMIT or ROLLBACK itself: an interval is
//! entered once its transaction has ended. A connection lost without a fault of ours to explain
//! it (a crashed backend) is itself reported.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The global clock: every tick is unique and later ticks happen later.
#[derive(Default)]
pub struct Clock(AtomicU64);

impl Clock {
    pub fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// A worker held partition `partition` of `target` (an index into the run's targets,
/// workers::targets; partition 0 for a projection not partitioned) from `open` to `close`.
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    pub target: usize,
    pub partition: i32,
    pub worker: usize,
    pub open: u64,
    pub close: u64,
}

/// A fault the harness issued between two ticks: a killed backend, or (`pid` None) a crash
/// of every backend. `done` is u64::MAX while the fault is still being issued.
struct Fault {
    pid: Option<i32>,
    issued: u64,
    done: u64,
}

#[derive(Default)]
pub struct FaultLog(Mutex<Vec<Fault>>);

impl FaultLog {
    /// Records a fault about to be issued; returns its number for `done`.
    pub fn issue(&self, pid: Option<i32>, clock: &Clock) -> usize {
        let mut faults = self.0.lock().unwrap();
        faults.push(Fault { pid, issued: clock.tick(), done: u64::MAX });
        faults.len() - 1
    }

    /// The fault has been issued: a session that connects from now on is not affected.
    pub fn done(&self, fault: usize, clock: &Clock) {
        self.0.lock().unwrap()[fault].done = clock.tick();
    }

    /// The tick at which the first fault that could have ended backend `pid`, connected at
    /// tick `since`, was issued: the backend let go of its locks after that tick, perhaps long
    /// before a later fault aimed at it too.
    pub fn first_for(&self, pid: i32, since: u64) -> Option<u64> {
        let faults = self.0.lock().unwrap();
        faults.iter()
            .find(|f| f.done > since && f.pid.is_none_or(|p| p == pid))
            .map(|f| f.issued)
    }
}

/// Pairs (earlier, later) of intervals of one target's partition that intersect.
pub fn overlaps(intervals: &[Interval]) -> Vec<(Interval, Interval)> {
    let mut sorted = intervals.to_vec();
    sorted.sort_by_key(|i| (i.target, i.partition, i.open));
    let mut found = Vec::new();
    let mut holder: Option<Interval> = None;
    for interval in sorted {
        match holder {
            Some(h) if h.target == interval.target && h.partition == interval.partition && interval.open < h.close => {
                found.push((h, interval));
                if interval.close > h.close {
                    holder = Some(interval);
                }
            }
            _ => holder = Some(interval),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(target: usize, open: u64, close: u64) -> Interval {
        Interval { target, partition: 0, worker: 0, open, close }
    }

    #[test]
    fn intervals_of_one_target_that_intersect_are_an_overlap() {
        assert_eq!(overlaps(&[at(0, 1, 5), at(0, 4, 8)]).len(), 1);
        assert_eq!(overlaps(&[at(0, 1, 10), at(0, 2, 3), at(0, 4, 5)]).len(), 2);
    }

    #[test]
    fn intervals_one_after_the_other_or_of_other_targets_are_not() {
        assert!(overlaps(&[at(0, 1, 2), at(0, 3, 4), at(1, 1, 4), at(2, 2, 3)]).is_empty());
    }

    #[test]
    fn intervals_of_two_partitions_of_one_target_are_not() {
        let other = Interval { partition: 1, ..at(0, 2, 6) };
        assert!(overlaps(&[at(0, 1, 5), other]).is_empty());
        assert_eq!(overlaps(&[at(0, 1, 5), other, Interval { partition: 1, ..at(0, 3, 4) }]).len(), 1);
    }

    #[test]
    fn a_lost_backend_is_explained_by_the_first_fault_that_could_have_taken_it() {
        let (clock, faults) = (Clock::default(), FaultLog::default());
        let before = faults.issue(Some(7), &clock);
        faults.done(before, &clock);
        let since = clock.tick();
        let other = faults.issue(Some(8), &clock);
        faults.done(other, &clock);
        let first = faults.issue(Some(7), &clock);
        faults.done(first, &clock);
        let crash = faults.issue(None, &clock);
        faults.done(crash, &clock);
        // Issued at ticks 1, 4, 6 and 8: the one before the session connected cannot explain it.
        assert_eq!(faults.first_for(7, since), Some(6));
        assert_eq!(faults.first_for(9, since), Some(8));
        assert_eq!(faults.first_for(9, clock.tick()), None);
    }
}
