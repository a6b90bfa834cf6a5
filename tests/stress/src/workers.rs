//! Workers: projections caught up under load. Each worker picks a projection at random and, in
//! one transaction, fetches a batch, applies it to `stress_applied` (the ground truth of what
//! was applied and committed) and records the batch in `stress_batches` with a commit-order
//! number, then commits — or, about one time in ten, rolls back (G5: the batch must come
//! again). Some transactions run under REPEATABLE READ (G10), some apply slowly.
//!
//! Three ways to fetch a batch:
//! - safe: `eventstore.projection_catchup` (lock, barrier, checkpoint in the transaction);
//! - tenant (--citus): `eventstore.tenant_catchup`, delegated to the tenant's node, some
//!   transactions taking the projection first with `tenant_lock_projection` (busy: nothing to
//!   do); an idle worker waits with `tenant_wait_for_events` instead of sleeping;
//! - naive (--unsafe): a plain SELECT past a checkpoint table of our own, with no lock and no
//!   barrier — the catch-up the extension exists to replace, which the detector must catch.
//!
//! On Citus (--citus) the projection lives on the tenant's shard: one row per batch, its events
//! as arrays, in `stress_tenant_batches`, distributed by tenant and colocated with
//! eventstore.events. The batch is then one single-shard INSERT on the node that ran the
//! catch-up, and commits with the checkpoint in one transaction there. (A table on the
//! coordinator would not do: Citus commits the worker's part first, in one phase, and the
//! coordinator's after it, so a backend lost in between keeps the checkpoint and loses the batch.)
//!
//! Each batch that returned rows leaves an interval in the trace (see trace.rs).
//!
//! With --partitions, the partitioned targets' handler fails on every poison event (load.rs): the
//! worker applies the batch up to it, rolls back, and reports the failure in a new transaction
//! with `eventstore.projection_failed` (G13), as the README's worker loop does; the extension
//! must park the event after the target's max_attempts. About one partitioned batch in twenty is
//! killed mid-batch instead (its backend terminated by the batch killer, faults.rs, after the
//! batch was applied and before COMMIT): the batch must come again.

use std::sync::atomic::Ordering;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::types::ToSql;
use postgres::Client;

use crate::db::{Ended, Link, Tally};
use crate::load::aggregate_name;
use crate::rng::Rng;
use crate::trace::Interval;
use crate::Run;

/// A projection and the scope of events it reads.
pub struct Target {
    pub projection: &'static str,
    /// None: a global projection over every instance.
    pub instance_id: Option<&'static str>,
    pub aggregate_types: Option<&'static [&'static str]>,
    pub event_types: Option<&'static [&'static str]>,
    /// Run with partition_catchup, its partition count changed mid-run (--partitions).
    pub partitioned: bool,
    /// The poison policy of a partitioned target, whose handler fails on poison events.
    pub poison: Option<Policy>,
}

/// A poison policy (eventstore.set_poison_policy).
#[derive(Clone, Copy)]
pub struct Policy {
    pub max_attempts: i32,
    /// The aggregate's later events are parked behind a parked event (true) or go on.
    pub hold_aggregate: bool,
}

/// How `stress_applied` names the instance of a global projection.
const GLOBAL_KEY: &str = "*";

impl Target {
    /// How `stress_applied` names the instance.
    pub fn instance_key(&self) -> &'static str {
        self.instance_id.unwrap_or(GLOBAL_KEY)
    }

    /// Parameters $1–$5 of `in_scope!`: projection, instance key, instance_id, aggregate
    /// types, event types.
    pub fn scope_params(&self) -> [&(dyn ToSql + Sync); 5] {
        let key: &(dyn ToSql + Sync) = match &self.instance_id { Some(i) => i, None => &GLOBAL_KEY };
        [&self.projection, key, &self.instance_id, &self.aggregate_types, &self.event_types]
    }

    pub fn name(&self) -> String {
        format!("{}@{}", self.projection, self.instance_key())
    }
}

const fn per_instance(projection: &'static str, instance_id: &'static str,
                      aggregate_types: Option<&'static [&'static str]>) -> Target {
    Target { projection, instance_id: Some(instance_id), aggregate_types, event_types: None, partitioned: false,
             poison: None }
}

/// How many of TARGETS a run uses: the partitioned ones only with --partitions.
const UNPARTITIONED_TARGETS: usize = 10;
/// The first GLOBAL_TARGETS of TARGETS are global: not on Citus, where they are refused.
const GLOBAL_TARGETS: usize = 3;

/// The targets of this run.
pub fn targets(run: &Run) -> &'static [Target] {
    if run.options.citus {
        &TARGETS[GLOBAL_TARGETS..UNPARTITIONED_TARGETS]
    } else if run.options.partitions {
        &TARGETS
    } else {
        &TARGETS[..UNPARTITIONED_TARGETS]
    }
}

/// Global, per-instance and filtered projections; the last two partitioned (--partitions only).
pub const TARGETS: [Target; 12] = [
    Target { projection: "all", instance_id: None, aggregate_types: None, event_types: None, partitioned: false,
             poison: None },
    Target { projection: "users", instance_id: None, aggregate_types: Some(&["user"]), event_types: None,
             partitioned: false, poison: None },
    Target { projection: "additions", instance_id: None, aggregate_types: None, event_types: Some(&["added"]),
             partitioned: false, poison: None },
    per_instance("tenant", "system", None),
    per_instance("tenant", "t1", None),
    per_instance("tenant", "t2", None),
    per_instance("tenant", "t3", None),
    per_instance("grants", "t1", Some(&["grant", "org"])),
    per_instance("grants", "t2", Some(&["grant", "org"])),
    per_instance("grants", "system", Some(&["grant", "org"])),
    Target { projection: "split", instance_id: None, aggregate_types: None, event_types: None, partitioned: true,
             poison: Some(Policy { max_attempts: 2, hold_aggregate: true }) },
    Target { projection: "split", instance_id: Some("t1"), aggregate_types: Some(&["user", "org"]),
             event_types: None, partitioned: true, poison: Some(Policy { max_attempts: 3, hold_aggregate: false }) },
];

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Safe,
    /// On Citus: the tenant-first functions, delegated.
    Tenant,
    Naive,
}

/// How a worker paces its transactions: under load, or draining alone at the end.
struct Pace {
    batch_sizes: &'static [i32],
    rollback_percent: u64,
    repeatable_read_percent: u64,
    slow_percent: u64,
    /// Safe mode: wait for the projection lock instead of taking zero rows when it is busy.
    wait: bool,
    /// A partitioned target's batch killed (its backend terminated) after it was applied.
    kill_percent: u64,
    /// Tenant mode: take the projection with tenant_lock_projection before the catch-up.
    lock_first_percent: u64,
}

const LOAD: Pace = Pace {
    batch_sizes: &[3, 10, 50], rollback_percent: 10, repeatable_read_percent: 15, slow_percent: 10, wait: false,
    kill_percent: 5, lock_first_percent: 20,
};
const DRAIN: Pace = Pace {
    batch_sizes: &[1000], rollback_percent: 0, repeatable_read_percent: 0, slow_percent: 0, wait: true,
    kill_percent: 0, lock_first_percent: 0,
};
/// The worker number of the drain in the trace and in stress_batches.
const DRAIN_WORKER: usize = 999;
const SLOW_APPLY_MS: (u64, u64) = (1, 30);
const IDLE_MS: (u64, u64) = (2, 15);
/// A drain that has not reached the head after this many batches is a failure of its own.
const MAX_DRAIN_BATCHES: usize = 100_000;
/// A drain whose batches failed on poison this many times in a row, with nothing committed in
/// between, has a poison event that is never parked (each is parked after at most 3 failures).
pub const MAX_FAILURES_IN_A_ROW: usize = 30;
/// What the handler's failure says (projection_failed records it).
const POISON_ERROR: &str = "stress: poison event";

const SAFE_FETCH: &str = "\
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, 0, false
  FROM eventstore.projection_catchup($1, $2, $3, $4, $5, $6)";

/// The same on Citus, delegated to the tenant's node by its first argument.
const TENANT_FETCH: &str = "\
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, 0, false
  FROM eventstore.tenant_catchup($1, $2, $3, $4, $5, $6)";

/// Takes a tenant's projection for the transaction; false when another transaction holds it.
const TENANT_LOCK: &str = "SELECT eventstore.tenant_lock_projection($1, $2)";

/// Waits until a catch-up of the tenant's projection could hand something out, or the timeout.
const TENANT_WAIT: &str = "SELECT eventstore.tenant_wait_for_events($1, $2, $3)";

/// A partitioned target's batch: the next batch of a free partition, led by its number, and
/// which events are poison.
const PARTITION_FETCH: &str = "\
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, partition,
       coalesce(payload ? 'poison', false)
  FROM eventstore.partition_catchup($1, $2, $3, $4, $5, $6)";

/// A handler failure, reported in a transaction of its own after the batch rolled back.
const REPORT_FAILURE: &str = "SELECT eventstore.projection_failed($1, $2, $3, $4, $5)";

/// Partition counts the resizer moves the partitioned targets between.
const PARTITION_COUNTS: (u64, u64) = (1, 4);
/// How long the resizer waits between two attempts.
const RESIZE_EVERY_MS: (u64, u64) = (300, 1500);
/// A partitioned target's drain stops after this many empty transactions in a row (a resize's
/// old partitions can reach the resize position in a call that hands out nothing).
const EMPTY_DRAINS: usize = 3;

/// Whether event `e` is in a target's scope. Parameters: $1 projection, $2 instance key,
/// $3 instance_id, $4 aggregate types, $5 event types.
macro_rules! in_scope {
    () => {
        "($3::text IS NULL OR e.instance_id = $3) \
         AND ($4::text[] IS NULL OR e.aggregate_type = ANY ($4)) \
         AND ($5::text[] IS NULL OR e.event_type = ANY ($5))"
    };
}
pub(crate) use in_scope;

/// The naive catch-up: everything past our own checkpoint, no lock, no barrier.
const NAIVE_FETCH: &str = concat!("\
SELECT e.position, e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, 0, false
  FROM eventstore.events e
 WHERE e.position > coalesce((SELECT checkpoint FROM stress_naive_checkpoints
                               WHERE projection = $1 AND instance_key = $2), 0)
   AND ", in_scope!(), "
 ORDER BY e.position
 LIMIT $6");

const NAIVE_ADVANCE: &str = "\
INSERT INTO stress_naive_checkpoints (projection, instance_key, checkpoint) VALUES ($1, $2, $3)
ON CONFLICT (projection, instance_key) DO UPDATE SET checkpoint = excluded.checkpoint";

/// The projection: every event applied, and the batch with the next commit-order number.
/// With the projection held, numbers are drawn in commit order.
const APPLY: &str = "\
WITH batch AS (
    INSERT INTO stress_batches (batch, projection, instance_key, worker, low, high, events, commit_order, partition)
    VALUES ($1, $2, $3, $4, $5, $6, cardinality($7::bigint[]), nextval('stress_commit_order'), $10))
INSERT INTO stress_applied (projection, instance_key, batch, ord, position, aggregate, sequence)
SELECT $2, $3, $1, u.ord, u.position, u.aggregate, u.sequence
  FROM unnest($7::bigint[], $8::text[], $9::bigint[]) WITH ORDINALITY AS u(position, aggregate, sequence, ord)";

/// The harness's own tables: the projection (`stress_applied`, one row per event applied,
/// and `stress_batches`, one row per batch with its commit-order number) and the naive
/// catch-up's checkpoints. Recreated for every run, with the extension's checkpoints.
const CREATE_TABLES: &str = "\
DROP TABLE IF EXISTS stress_applied, stress_batches, stress_naive_checkpoints;
DROP SEQUENCE IF EXISTS stress_commit_order;
TRUNCATE eventstore.projection_states;
CREATE TABLE stress_applied (
    projection text NOT NULL, instance_key text NOT NULL, batch bigint NOT NULL, ord bigint NOT NULL,
    position bigint NOT NULL, aggregate text NOT NULL, sequence bigint NOT NULL);
CREATE TABLE stress_batches (
    batch bigint PRIMARY KEY, projection text NOT NULL, instance_key text NOT NULL, worker int NOT NULL,
    low bigint NOT NULL, high bigint NOT NULL, events int NOT NULL, commit_order bigint NOT NULL,
    partition int NOT NULL);
CREATE SEQUENCE stress_commit_order;
CREATE TABLE stress_naive_checkpoints (
    projection text, instance_key text, checkpoint bigint NOT NULL, PRIMARY KEY (projection, instance_key));";

/// On Citus: the projection one row per batch, on the tenant's shard (see the module comment),
/// and the naive catch-up's checkpoints there too.
const CREATE_TENANT_TABLES: &str = "\
DROP TABLE IF EXISTS stress_tenant_batches, stress_naive_checkpoints;
DROP SEQUENCE IF EXISTS stress_commit_order;
TRUNCATE eventstore.projection_states;
CREATE TABLE stress_tenant_batches (
    batch bigint NOT NULL, projection text NOT NULL, instance_key text NOT NULL, worker int NOT NULL,
    low bigint NOT NULL, high bigint NOT NULL, positions bigint[] NOT NULL, aggregates text[] NOT NULL,
    sequences bigint[] NOT NULL, commit_order bigint NOT NULL, partition int NOT NULL,
    PRIMARY KEY (instance_key, batch));
CREATE SEQUENCE stress_commit_order;
CREATE TABLE stress_naive_checkpoints (
    projection text, instance_key text, checkpoint bigint NOT NULL, PRIMARY KEY (projection, instance_key));
SELECT create_distributed_table('stress_tenant_batches', 'instance_key', colocate_with => 'eventstore.events');
SELECT create_distributed_table('stress_naive_checkpoints', 'instance_key', colocate_with => 'eventstore.events');";

/// The same batch into `stress_tenant_batches`, the parameters as APPLY's: a single-shard INSERT
/// (the commit-order number is drawn on the coordinator, with the projection held).
const TENANT_APPLY: &str = "\
INSERT INTO stress_tenant_batches (batch, projection, instance_key, worker, low, high, positions, aggregates,
                                   sequences, commit_order, partition)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, nextval('stress_commit_order'), $10)";

/// The harness's tables, recreated for every run (`citus`: on the tenants' shards).
pub fn create_tables(client: &mut Client, citus: bool) -> Result<(), postgres::Error> {
    client.batch_execute(if citus { CREATE_TENANT_TABLES } else { CREATE_TABLES })
}

/// A batch as fetched, in the order it came.
#[derive(Default)]
struct Fetched {
    positions: Vec<i64>,
    aggregates: Vec<String>,
    sequences: Vec<i64>,
    /// The partition the batch came from (0 for a projection not partitioned).
    partition: i32,
    /// Which events are poison (always false for a target without a poison policy).
    poison: Vec<bool>,
}

impl Fetched {
    /// The first `n` events.
    fn prefix(&self, n: usize) -> Fetched {
        Fetched { positions: self.positions[..n].to_vec(), aggregates: self.aggregates[..n].to_vec(),
                  sequences: self.sequences[..n].to_vec(), partition: self.partition, poison: self.poison[..n].to_vec() }
    }
}

/// What the partitioned targets' workers saw of poison events and mid-batch kills.
#[derive(Default)]
pub struct PoisonReport {
    /// Batches that failed on a poison event and were rolled back.
    pub failures: u64,
    /// Failures reported with projection_failed (committed).
    pub reported: u64,
    /// Reports refused with 22023 because the event had been passed meanwhile (another worker
    /// reported the same failure first and the event was parked), expected.
    pub late: u64,
    /// Batches whose backend was terminated mid-batch (after they were applied, before COMMIT).
    pub killed: Vec<i64>,
    /// Drains stopped because a poison event kept failing and was never parked.
    pub never_parked: Vec<String>,
}

impl PoisonReport {
    fn add(&mut self, other: PoisonReport) {
        self.failures += other.failures;
        self.reported += other.reported;
        self.late += other.late;
        self.killed.extend(other.killed);
        self.never_parked.extend(other.never_parked);
    }
}

#[derive(Default)]
pub struct WorkerReport {
    pub intervals: Vec<Interval>,
    /// Batches whose COMMIT the client saw succeed.
    pub committed: Vec<i64>,
    pub rolled_back: u64,
    pub poison: PoisonReport,
    pub tally: Tally,
}

impl WorkerReport {
    pub fn add(&mut self, other: WorkerReport) {
        self.intervals.extend(other.intervals);
        self.committed.extend(other.committed);
        self.rolled_back += other.rolled_back;
        self.poison.add(other.poison);
        self.tally.add(other.tally);
    }
}

struct Worker<'r> {
    run: &'r Run,
    id: usize,
    mode: Mode,
    link: Link<'r>,
    rng: Rng,
    report: WorkerReport,
    /// Transactions in a row that failed on a poison event.
    failures_in_a_row: usize,
}

pub fn worker(run: &Run, id: usize) -> Result<WorkerReport, String> {
    let mut worker = Worker::new(run, id, &format!("stress-worker-{id}"));
    while !run.stopping() {
        let target = worker.rng.between(0, targets(run).len() as u64 - 1) as usize;
        if worker.transaction(target, &LOAD)? == 0 {
            let idle = worker.rng.between(IDLE_MS.0, IDLE_MS.1);
            worker.idle(target, idle)?;
        }
    }
    Ok(worker.finish())
}

/// Catches every projection up to the head, one after the other, once the load has stopped.
pub fn drain(run: &Run) -> Result<WorkerReport, String> {
    let mut worker = Worker::new(run, DRAIN_WORKER, "stress-drain");
    for (index, target) in targets(run).iter().enumerate() {
        let (mut batches, mut empty) = (0, 0);
        let empty_drains = if target.partitioned { EMPTY_DRAINS } else { 1 };
        worker.failures_in_a_row = 0;
        while empty < empty_drains {
            if worker.failures_in_a_row >= MAX_FAILURES_IN_A_ROW {
                worker.report.poison.never_parked.push(target.name());
                break;
            }
            if worker.transaction(index, &DRAIN)? > 0 {
                empty = 0;
            } else {
                empty += 1;
            }
            batches += 1;
            if batches > MAX_DRAIN_BATCHES {
                return Err(format!("drain of {} never reached the head", target.name()));
            }
        }
    }
    Ok(worker.finish())
}

/// Gives the partitioned targets their first partition count and their poison policy (before
/// the load).
pub fn define_partitions(client: &mut Client) -> Result<(), postgres::Error> {
    client.batch_execute("DELETE FROM eventstore.projections WHERE projection = 'split';
                          DELETE FROM eventstore.projection_failures WHERE projection = 'split';
                          DELETE FROM eventstore.parked_events WHERE projection = 'split'")?;
    for target in TARGETS.iter().filter(|t| t.partitioned) {
        client.execute("SELECT eventstore.set_partitions($1, $2, 2)", &[&target.projection, &target.instance_id])?;
        if let Some(policy) = target.poison {
            client.execute("SELECT eventstore.set_poison_policy($1, $2, $3, $4)",
                &[&target.projection, &target.instance_id, &policy.max_attempts, &policy.hold_aggregate])?;
        }
    }
    Ok(())
}

/// What the resizer did: resizes done, and resizes refused because the previous one of that
/// projection was still draining (55000, expected).
#[derive(Default)]
pub struct Resizes {
    pub done: u64,
    pub refused: u64,
    pub tally: Tally,
}

/// Changes the partition count of a partitioned target, at random, while the load runs (G12:
/// nothing skipped, repeated or reordered across a resize; the detector checks).
pub fn resizer(run: &Run) -> Result<Resizes, String> {
    let mut link = Link::new(run, "stress-resizer".to_string());
    let mut rng = Rng::for_thread(run.options.seed, 900);
    let mut resizes = Resizes::default();
    let partitioned: Vec<&Target> = TARGETS.iter().filter(|t| t.partitioned).collect();
    // Each target's count as last set (define_partitions: 2); a resize always changes it.
    let mut counts = vec![2u64; partitioned.len()];
    while !run.stopping() {
        std::thread::sleep(Duration::from_millis(rng.between(RESIZE_EVERY_MS.0, RESIZE_EVERY_MS.1)));
        let index = rng.between(0, partitioned.len() as u64 - 1) as usize;
        let target = partitioned[index];
        let mut count = rng.between(PARTITION_COUNTS.0, PARTITION_COUNTS.1 - 1);
        if count >= counts[index] {
            count += 1;
        }
        let client = link.client()?;
        match client.execute("SELECT eventstore.set_partitions($1, $2, $3)",
                             &[&target.projection, &target.instance_id, &(count as i32)]) {
            Ok(_) => {
                resizes.done += 1;
                counts[index] = count;
            }
            Err(error) if error.code() == Some(&postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) => {
                resizes.refused += 1;
            }
            Err(error) => {
                link.failed(&error);
            }
        }
    }
    resizes.tally = link.tally;
    Ok(resizes)
}

impl<'r> Worker<'r> {
    fn new(run: &'r Run, id: usize, name: &str) -> Self {
        let mode = match (run.options.unsafe_mode, run.options.citus) {
            (true, _) => Mode::Naive,
            (false, true) => Mode::Tenant,
            (false, false) => Mode::Safe,
        };
        let rng = Rng::for_thread(run.options.seed, 200 + id as u64);
        Worker { run, id, mode, link: Link::new(run, name.to_string()), rng, report: WorkerReport::default(),
                 failures_in_a_row: 0 }
    }

    fn finish(self) -> WorkerReport {
        WorkerReport { tally: self.link.tally, ..self.report }
    }

    /// Nothing to do on `target` for now: sleeps `ms`; in tenant mode waits as long for its
    /// events with tenant_wait_for_events (which returns at once when there are some).
    fn idle(&mut self, target: usize, ms: u64) -> Result<(), String> {
        if self.mode != Mode::Tenant {
            std::thread::sleep(Duration::from_millis(ms));
            return Ok(());
        }
        let target = &targets(self.run)[target];
        let timeout_ms = ms as i32;
        let result = self.link.client()?.query_one(TENANT_WAIT, &[&target.instance_id, &target.projection, &timeout_ms]);
        if let Err(error) = result {
            self.link.failed(&error);
        }
        Ok(())
    }

    /// One transaction on `target`; returns how many events it fetched (0 when the projection
    /// was busy or up to date, or the transaction failed before fetching).
    fn transaction(&mut self, target: usize, pace: &Pace) -> Result<usize, String> {
        let batch_size = *self.rng.pick(pace.batch_sizes);
        let repeatable_read = self.rng.chance(pace.repeatable_read_percent);
        let begin = if repeatable_read && !self.run.options.read_committed {
            "BEGIN ISOLATION LEVEL REPEATABLE READ"
        } else {
            "BEGIN"
        };
        let slow = self.rng.chance(pace.slow_percent).then(|| self.rng.between(SLOW_APPLY_MS.0, SLOW_APPLY_MS.1));
        let commit = !self.rng.chance(pace.rollback_percent);
        let targets = targets(self.run);
        let kill = targets[target].partitioned && self.rng.chance(pace.kill_percent);
        let lock_first = self.mode == Mode::Tenant && self.rng.chance(pace.lock_first_percent);
        let batch = self.run.next_batch.fetch_add(1, Ordering::Relaxed);
        let (run, mode, wait) = (self.run, self.mode, pace.wait);
        let apply_statement = if run.options.citus { TENANT_APPLY } else { APPLY };
        let pid = self.link.pid()?;
        let client = self.link.client()?;

        let mut opened: Option<u64> = None;
        let mut closed: Option<u64> = None;
        let mut fetched_count = 0;
        let mut partition = 0;
        let mut killed = false;
        let result = (|| -> Result<Ending, postgres::Error> {
            client.batch_execute(begin)?;
            if lock_first {
                let (instance_id, projection) = (&targets[target].instance_id, &targets[target].projection);
                if !client.query_one(TENANT_LOCK, &[instance_id, projection])?.get::<_, bool>(0) {
                    client.batch_execute("COMMIT")?;
                    return Ok(Ending::Empty);
                }
            }
            let fetched = fetch(client, mode, &targets[target], batch_size, wait)?;
            partition = fetched.partition;
            fetched_count = fetched.positions.len();
            if fetched_count == 0 {
                client.batch_execute("COMMIT")?;
                return Ok(Ending::Empty);
            }
            opened = Some(run.clock.tick());
            if let Some(ms) = slow {
                std::thread::sleep(Duration::from_millis(ms));
            }
            // The handler applies the events in order and fails on the first poison one.
            let poison = fetched.poison.iter().position(|&p| p);
            let applied = poison.unwrap_or(fetched_count);
            if applied > 0 {
                apply(client, apply_statement, mode, &targets[target], batch, self.id, &fetched.prefix(applied))?;
            }
            // The interval is entered once the transaction has ended: a fault may have taken the
            // backend before this tick (with nothing sent since, only COMMIT or ROLLBACK tells).
            closed = Some(run.clock.tick());
            if let Some(n) = poison {
                client.batch_execute("ROLLBACK")?;
                return Ok(Ending::Failed { position: fetched.positions[n] });
            }
            // Killed mid-batch: the backend is gone before COMMIT is sent, which then fails.
            killed = kill && run.kill_requests.terminate(pid);
            client.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })?;
            Ok(if commit { Ending::Committed } else { Ending::RolledBack })
        })();

        let ended = result.as_ref().err().map(|error| self.link.failed(error));
        if let Some(open) = opened {
            // A failed transaction closes at its failure: after a statement error that is the
            // tick just before its ROLLBACK; after a lost backend, the first fault that could
            // have taken it, which may precede `closed` (closing early hides, never fakes).
            let ended_at = match ended {
                Some(Ended::Lost { at } | Ended::RolledBack { at }) => at,
                None => u64::MAX,
            };
            let close = closed.unwrap_or(u64::MAX).min(ended_at).max(open);
            self.report.intervals.push(Interval { target, partition, worker: self.id, open, close });
        }
        match result {
            Ok(Ending::Empty) => self.failures_in_a_row = 0,
            Ok(Ending::Committed) => {
                self.failures_in_a_row = 0;
                self.report.committed.push(batch);
            }
            Ok(Ending::RolledBack) => self.report.rolled_back += 1,
            Ok(Ending::Failed { position }) => {
                self.failures_in_a_row += 1;
                self.report.poison.failures += 1;
                self.report_failure(&targets[target], partition, position)?;
            }
            Err(_) => {
                if killed {
                    self.report.poison.killed.push(batch);
                }
            }
        }
        Ok(fetched_count)
    }

    /// Reports a handler failure in a transaction of its own, after the batch rolled back (G13).
    /// Refused with 22023 when the event was passed meanwhile (another worker's report of the
    /// same failure reached max_attempts first and the event was parked): expected.
    fn report_failure(&mut self, target: &Target, partition: i32, position: i64) -> Result<(), String> {
        let client = self.link.client()?;
        match client.execute(REPORT_FAILURE,
                             &[&target.projection, &target.instance_id, &partition, &POISON_ERROR, &position]) {
            Ok(_) => self.report.poison.reported += 1,
            Err(error) if error.code() == Some(&SqlState::INVALID_PARAMETER_VALUE) => self.report.poison.late += 1,
            Err(error) => {
                self.link.failed(&error);
            }
        }
        Ok(())
    }
}

/// How a worker's transaction ended, when no statement failed.
enum Ending {
    /// Nothing fetched (busy, or up to date), committed.
    Empty,
    Committed,
    RolledBack,
    /// The handler failed on the poison event at `position`; rolled back.
    Failed { position: i64 },
}

fn fetch(client: &mut Client, mode: Mode, target: &Target, batch_size: i32, wait: bool)
    -> Result<Fetched, postgres::Error>
{
    let rows = match mode {
        Mode::Safe => client.query(if target.partitioned { PARTITION_FETCH } else { SAFE_FETCH }, &[&target.projection, &target.instance_id,
            &batch_size, &target.aggregate_types, &target.event_types, &wait])?,
        Mode::Tenant => client.query(TENANT_FETCH, &[&target.instance_id, &target.projection,
            &batch_size, &target.aggregate_types, &target.event_types, &wait])?,
        Mode::Naive => {
            let [p1, p2, p3, p4, p5] = target.scope_params();
            client.query(NAIVE_FETCH, &[p1, p2, p3, p4, p5, &(batch_size as i64)])?
        }
    };
    let mut fetched = Fetched::default();
    for row in rows {
        fetched.positions.push(row.get(0));
        fetched.aggregates.push(aggregate_name(row.get(1), row.get(2), row.get(3)));
        fetched.sequences.push(row.get(4));
        fetched.partition = row.get(5);
        fetched.poison.push(target.poison.is_some() && row.get::<_, bool>(6));
    }
    Ok(fetched)
}

/// Records the batch with `statement` (APPLY, or TENANT_APPLY on Citus).
fn apply(client: &mut Client, statement: &str, mode: Mode, target: &Target, batch: i64, worker: usize,
         fetched: &Fetched) -> Result<(), postgres::Error>
{
    let low = *fetched.positions.iter().min().expect("a batch has events");
    let high = *fetched.positions.iter().max().expect("a batch has events");
    client.execute(statement, &[&batch, &target.projection, &target.instance_key(), &(worker as i32),
        &low, &high, &fetched.positions, &fetched.aggregates, &fetched.sequences, &fetched.partition])?;
    if mode == Mode::Naive {
        let last = *fetched.positions.last().unwrap();
        client.execute(NAIVE_ADVANCE, &[&target.projection, &target.instance_key(), &last])?;
    }
    Ok(())
}
