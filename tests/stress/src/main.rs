//! eventstore-stress: the stress harness with its race detector (run it with scripts/stress).
//!
//! Writers push under load (load.rs), workers catch projections up and apply every batch in
//! the same transaction (workers.rs), a killer terminates their backends and, with --restarts,
//! the cluster crashes and comes back (faults.rs). Every client reconnects on its own. When
//! the time is up the load stops, every projection is drained to the head, and the detector
//! (detector.rs) holds the result against eventstore.events.
//!
//! --partitions adds two partitioned projections, run with partition_catchup, whose partition
//! counts a resizer changes while the load runs: the detector then checks them per partition
//! (one transaction at a time, batches in order) and per aggregate across every resize. About
//! three events in a thousand are then poison: the partitioned projections' handler fails on it,
//! the worker reports the failure with projection_failed in a new transaction, and the
//! detector proves that every poison event was parked after its projection's max_attempts,
//! that nothing else was (but, with hold_aggregate, the aggregate's later events) and that the
//! rest was applied exactly once. Partitioned batches are also killed mid-batch (their backend
//! terminated after applying, before COMMIT): they must come again.
//!
//! --unsafe replaces projection_catchup with a naive catch-up of the harness's own (no lock, no
//! barrier): the detector must then report violations, which proves that it bites.
//!
//! --citus runs against an existing Citus coordinator (--port; eventstore.distribute() done,
//! README "Running on Citus") instead of a cluster of the harness's own: each push is for one
//! tenant, with push(instance_id, commands); the projections are per tenant only (a global one
//! is refused there); workers call only tenant_catchup, tenant_lock_projection and
//! tenant_wait_for_events; every call is delegated to the tenant's node (a call that is not is
//! refused, ES421, and counted as an error). The projection lives on the tenant's shard too
//! (workers.rs), and the detector reads a snapshot of the tables taken after the drain
//! (detector.rs): the same checks, per tenant. --restarts and --partitions are not supported
//! there.
//!
//! The last line is `stress: events=… … violations=N`; the exit status is 1 when N > 0, 2 when
//! the harness itself could not run.

mod db;
mod detector;
mod faults;
mod load;
mod rng;
mod trace;
mod workers;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::thread::ScopedJoinHandle;
use std::time::{Duration, Instant};

use db::Tally;
use detector::{Findings, Observed};
use load::{Outcome, Push};
use trace::{Clock, FaultLog};
use workers::WorkerReport;

const USAGE: &str = "usage: eventstore-stress [--seconds N] [--unsafe] [--restarts] [--partitions] \
[--read-committed] [--citus] [--port P] [--data-dir DIR] [--pg-bin DIR] [--writers N] [--workers N] [--seed N]";

pub struct Options {
    pub seconds: u64,
    /// Workers use the naive catch-up instead of projection_catchup.
    pub unsafe_mode: bool,
    /// Crash (immediate shutdown) and restart the cluster during the load.
    pub restarts: bool,
    /// Add partitioned projections, resized while the load runs.
    pub partitions: bool,
    /// Workers catch up under READ COMMITTED only (the SQL edition refuses REPEATABLE READ).
    pub read_committed: bool,
    /// Against an existing Citus coordinator on `port`: tenant-first calls, per-tenant projections.
    pub citus: bool,
    pub port: u16,
    /// The cluster's data directory, for pg_ctl.
    pub data_dir: PathBuf,
    pub pg_bin: PathBuf,
    pub writers: usize,
    pub workers: usize,
    pub seed: u64,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
        let mut options = Options {
            seconds: 20,
            unsafe_mode: false,
            restarts: false,
            partitions: false,
            read_committed: false,
            citus: false,
            port: std::env::var("EVENTSTORE_STRESS_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5483),
            data_dir: PathBuf::from("/var/tmp/eventstore/stress"),
            pg_bin: PathBuf::from("/usr/lib/postgresql/15/bin"),
            writers: 6,
            workers: 6,
            seed: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        };
        while let Some(arg) = args.next() {
            let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
            let number = |v: String| v.parse::<u64>().map_err(|_| format!("{arg}: not a number: {v}"));
            match arg.as_str() {
                "--seconds" => options.seconds = number(value()?)?,
                "--unsafe" => options.unsafe_mode = true,
                "--restarts" => options.restarts = true,
                "--partitions" => options.partitions = true,
                "--read-committed" => options.read_committed = true,
                "--citus" => options.citus = true,
                "--port" => options.port = number(value()?)? as u16,
                "--data-dir" => options.data_dir = PathBuf::from(value()?),
                "--pg-bin" => options.pg_bin = PathBuf::from(value()?),
                "--writers" => options.writers = number(value()?)? as usize,
                "--workers" => options.workers = number(value()?)? as usize,
                "--seed" => options.seed = number(value()?)?,
                _ => return Err(format!("unknown argument: {arg}")),
            }
        }
        if options.citus && (options.restarts || options.partitions) {
            return Err("--restarts and --partitions are not supported with --citus".to_string());
        }
        Ok(options)
    }
}

/// What every thread of a run shares.
pub struct Run {
    pub options: Options,
    pub clock: Clock,
    pub faults: FaultLog,
    stop: AtomicBool,
    /// Batch numbers, unique over the run.
    pub next_batch: AtomicI64,
    /// Workers' requests to be killed mid-batch (--partitions).
    pub kill_requests: faults::KillRequests,
}

impl Run {
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn main() {
    let options = Options::parse(std::env::args().skip(1)).unwrap_or_else(|e| {
        eprintln!("stress: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let run = Run { options, clock: Clock::default(), faults: FaultLog::default(),
                    stop: AtomicBool::new(false), next_batch: AtomicI64::new(1),
                    kill_requests: faults::KillRequests::default() };
    match stress(&run) {
        Ok(violations) => std::process::exit(if violations > 0 { 1 } else { 0 }),
        Err(e) => {
            eprintln!("stress: failed: {e}");
            std::process::exit(2);
        }
    }
}

/// Everything the load threads brought back.
#[derive(Default)]
struct Loaded {
    pushes: Vec<Push>,
    workers: WorkerReport,
    tally: Tally,
    kills: u64,
    /// Backends killed mid-batch at their worker's request.
    batch_kills: u64,
    restarts: u64,
    resizes: workers::Resizes,
}

/// Load, drain, detect; returns the number of violations.
fn stress(run: &Run) -> Result<u64, String> {
    let o = &run.options;
    println!("stress: seed={} mode={} seconds={} writers={} workers={} restarts={} partitions={} port={}{}",
        o.seed, if o.unsafe_mode { "unsafe" } else { "safe" }, o.seconds, o.writers, o.workers,
        o.restarts, o.partitions, o.port, if o.citus { " citus" } else { "" });
    let started = Instant::now();
    let mut setup = db::connect(o.port, "stress-setup", 0)?;
    workers::create_tables(&mut setup.client, o.citus).map_err(|e| format!("creating the tables: {e}"))?;
    if o.partitions {
        workers::define_partitions(&mut setup.client).map_err(|e| format!("defining the partitions: {e}"))?;
    }
    drop(setup);

    let mut loaded = load(run)?;
    let drained = workers::drain(run)?;
    loaded.workers.add(drained);
    let worker_tally = std::mem::take(&mut loaded.workers.tally);
    loaded.tally.add(worker_tally);
    print_load(&loaded);

    let mut session = db::connect(o.port, "stress-detector", 0)?;
    detector::read_tables(&mut session.client, o.citus).map_err(|e| format!("detector: {e}"))?;
    let observed = Observed {
        pushes: &loaded.pushes,
        committed_batches: &loaded.workers.committed,
        intervals: &loaded.workers.intervals,
        targets: workers::targets(run),
        killed_batches: &loaded.workers.poison.killed,
        never_parked: &loaded.workers.poison.never_parked,
    };
    let mut findings = detector::detect(&mut session.client, &observed).map_err(|e| format!("detector: {e}"))?;
    findings.dropped = loaded.tally.dropped;
    findings.errors = loaded.tally.bugs.len() as u64;
    for bug in loaded.tally.bugs.iter().take(10) {
        println!("stress: VIOLATION unexpected error: {bug}");
    }
    if findings.dropped > 0 {
        print_crashes(findings.dropped, &o.data_dir.join("server.log"));
    }
    print_findings(run, &loaded, &findings, started.elapsed());
    Ok(findings.violations())
}

/// Runs writers, workers and faults for the given seconds, then stops them and joins them.
fn load(run: &Run) -> Result<Loaded, String> {
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..run.options.writers)
            .map(|id| scope.spawn(move || load::writer(run, id))).collect();
        let workers: Vec<_> = (0..run.options.workers)
            .map(|id| scope.spawn(move || workers::worker(run, id))).collect();
        let killer = scope.spawn(|| faults::killer(run));
        let restarter = run.options.restarts.then(|| scope.spawn(|| faults::restarter(run)));
        let resizer = run.options.partitions.then(|| scope.spawn(|| workers::resizer(run)));
        let batch_killer = run.options.partitions.then(|| scope.spawn(|| faults::batch_killer(run)));
        std::thread::sleep(Duration::from_secs(run.options.seconds));
        run.stop.store(true, Ordering::SeqCst);

        let mut loaded = Loaded::default();
        for writer in writers {
            let report = joined(writer)?;
            loaded.pushes.extend(report.pushes);
            loaded.tally.add(report.tally);
        }
        for worker in workers {
            loaded.workers.add(joined(worker)?);
        }
        let (kills, killer_tally) = joined(killer)?;
        loaded.kills = kills;
        loaded.tally.add(killer_tally);
        if let Some(restarter) = restarter {
            loaded.restarts = joined(restarter)?;
        }
        if let Some(batch_killer) = batch_killer {
            let (kills, tally) = joined(batch_killer)?;
            loaded.batch_kills = kills;
            loaded.tally.add(tally);
        }
        if let Some(resizer) = resizer {
            loaded.resizes = joined(resizer)?;
            loaded.tally.add(std::mem::take(&mut loaded.resizes.tally));
        }
        Ok(loaded)
    })
}

fn joined<T>(handle: ScopedJoinHandle<'_, Result<T, String>>) -> Result<T, String> {
    handle.join().map_err(|_| "a thread panicked".to_string())?
}

/// A connection lost without a fault of ours is most often a crashed backend: show the
/// server's own account of it.
fn print_crashes(dropped: u64, server_log: &std::path::Path) {
    println!("stress: VIOLATION {dropped} connections lost without a fault of ours");
    let log = std::fs::read_to_string(server_log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    for (n, line) in lines.iter().enumerate().filter(|(_, l)| l.contains("terminated by signal")) {
        println!("stress:   server log: {line}");
        if let Some(next) = lines.get(n + 1).filter(|l| l.contains("Failed process was running")) {
            println!("stress:   {}", next.trim());
        }
    }
}

fn print_load(loaded: &Loaded) {
    let pushes = |outcome| loaded.pushes.iter().filter(|p| p.outcome == outcome).count();
    let mut latencies: Vec<Duration> = loaded.pushes.iter().map(|p| p.latency).collect();
    latencies.sort();
    let quantile = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize)
        .map_or(0, |d| d.as_millis());
    println!("stress: pushes committed={} never_committed={} unknown={} (push ms p50={} p99={} max={}); \
              batches committed={} rolled_back={}; connections lost to faults={}; serialization_retries={}",
        pushes(Outcome::Committed), pushes(Outcome::NeverCommitted), pushes(Outcome::Unknown),
        quantile(0.5), quantile(0.99), quantile(1.0),
        loaded.workers.committed.len(), loaded.workers.rolled_back, loaded.tally.faults, loaded.tally.retries);
    if loaded.resizes.done + loaded.resizes.refused > 0 {
        println!("stress: partition resizes done={} refused_while_draining={}",
            loaded.resizes.done, loaded.resizes.refused);
        let poison = &loaded.workers.poison;
        println!("stress: poison batches failed={} failures reported={} reports refused as late={}; \
                  batches killed mid-batch={} (backends killed at their worker's request={})",
            poison.failures, poison.reported, poison.late, poison.killed.len(), loaded.batch_kills);
    }
}

fn print_findings(run: &Run, loaded: &Loaded, f: &Findings, took: Duration) {
    println!("stress: took {:.1}s; also gaps={} aggregate_order={} phantom={} partial={} stray={} dropped={} errors={} \
              parked={} unparked={}",
        took.as_secs_f64(), f.gaps, f.aggregate_order, f.phantom, f.partial, f.stray, f.dropped, f.errors,
        f.parked, f.unparked);
    println!("stress: events={} writers={} workers={} kills={} restarts={} skipped={} dup={} order={} \
              overlap={} lost={} violations={}",
        f.events, run.options.writers, run.options.workers, loaded.kills, loaded.restarts,
        f.skipped, f.dup, f.order, f.overlap, f.lost, f.violations());
}
