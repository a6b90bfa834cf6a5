//! Faults: a killer that terminates writer and worker backends at random, (--partitions) a
//! batch killer that terminates a worker's backend when the worker asks for it, mid-batch, and
//! (--restarts) a restarter that crashes the whole cluster with an immediate shutdown and starts
//! it again.
//! Each fault is entered in the trace before it is issued (see trace.rs), so that the clients
//! it hits can tell it from a crash the harness did not cause.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::db::{Link, Tally};
use crate::rng::Rng;
use crate::Run;

const KILL_EVERY_MS: (u64, u64) = (150, 650);
/// A restart every this many seconds of load, and at least one.
const SECONDS_PER_RESTART: u64 = 30;
/// How long the cluster stays down before it is started again.
const DOWN_FOR: Duration = Duration::from_millis(500);
const POLL: Duration = Duration::from_millis(50);

const VICTIMS: &str = "\
SELECT pid FROM pg_stat_activity
 WHERE datname = current_database() AND application_name ~ '^stress-(writer|worker)-'";

/// Kills backends until the load stops; returns how many it killed.
pub fn killer(run: &Run) -> Result<(u64, Tally), String> {
    let mut rng = Rng::for_thread(run.options.seed, 1);
    let mut link = Link::new(run, "stress-killer".to_string());
    let mut kills = 0;
    while sleep_unless_stopping(run, Duration::from_millis(rng.between(KILL_EVERY_MS.0, KILL_EVERY_MS.1))) {
        let client = link.client()?;
        let victims: Vec<i32> = match client.query(VICTIMS, &[]) {
            Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
            Err(error) => { link.failed(&error); continue; }
        };
        if victims.is_empty() {
            continue;
        }
        let pid = *rng.pick(&victims);
        let fault = run.faults.issue(Some(pid), &run.clock);
        // The pid typed: Citus adds pg_terminate_backend(global_pid bigint, ...), which makes an
        // untyped parameter ambiguous (42725).
        let result = link.client()?.query_one("SELECT pg_terminate_backend($1::int)", &[&pid]);
        run.faults.done(fault, &run.clock);
        match result {
            Ok(row) => kills += u64::from(row.get::<_, bool>(0)),
            Err(error) => { link.failed(&error); }
        }
    }
    Ok((kills, link.tally))
}

/// How long a worker waits for the batch killer; pg_terminate_backend waits for the backend to
/// exit for at most TERMINATE_WAIT_MS.
const KILL_TIMEOUT: Duration = Duration::from_secs(20);
const TERMINATE_WAIT_MS: i64 = 10_000;

/// A worker's request: the pid of its backend, and where to answer whether it was killed.
type KillRequest = (i32, mpsc::SyncSender<bool>);

/// Workers' requests to have their own backend terminated mid-batch, served by [`batch_killer`].
#[derive(Default)]
pub struct KillRequests {
    /// Pending requests, and whether the batch killer has stopped.
    queue: Mutex<(Vec<KillRequest>, bool)>,
    ready: Condvar,
}

impl KillRequests {
    /// Has backend `pid` terminated by the batch killer, from another session, and waits until
    /// it is gone; false when it could not be (the batch killer stopped, or the kill failed).
    pub fn terminate(&self, pid: i32) -> bool {
        let (answer, answered) = mpsc::sync_channel(1);
        {
            let mut queue = self.queue.lock().unwrap();
            if queue.1 {
                return false;
            }
            queue.0.push((pid, answer));
        }
        self.ready.notify_one();
        answered.recv_timeout(KILL_TIMEOUT).unwrap_or(false)
    }

    /// The next request; None once the load stops (and from then on, every request is refused).
    fn next(&self, run: &Run) -> Option<KillRequest> {
        let mut queue = self.queue.lock().unwrap();
        loop {
            if let Some(request) = queue.0.pop() {
                return Some(request);
            }
            if run.stopping() {
                queue.1 = true;
                return None;
            }
            queue = self.ready.wait_timeout(queue, POLL).unwrap().0;
        }
    }
}

/// Terminates the backends of workers that ask for it mid-batch (after applying a batch, before
/// COMMIT: the batch must come again), until the load stops; returns how many it killed.
pub fn batch_killer(run: &Run) -> Result<(u64, Tally), String> {
    let mut link = Link::new(run, "stress-batch-killer".to_string());
    let mut kills = 0;
    while let Some((pid, answer)) = run.kill_requests.next(run) {
        let fault = run.faults.issue(Some(pid), &run.clock);
        let result = link.client()?.query_one("SELECT pg_terminate_backend($1::int, $2)", &[&pid, &TERMINATE_WAIT_MS]);
        run.faults.done(fault, &run.clock);
        let killed = match result {
            Ok(row) => row.get::<_, bool>(0),
            Err(error) => { link.failed(&error); false }
        };
        kills += u64::from(killed);
        // The worker may have given up waiting: then nobody listens.
        let _ = answer.send(killed);
    }
    Ok((kills, link.tally))
}

/// Crashes and restarts the cluster, evenly spread over the load; returns how many times.
pub fn restarter(run: &Run) -> Result<u64, String> {
    let count = (run.options.seconds / SECONDS_PER_RESTART).max(1);
    let started = Instant::now();
    let mut restarts = 0;
    for n in 1..=count {
        let at = Duration::from_secs(run.options.seconds) * n as u32 / (count as u32 + 1);
        if !sleep_unless_stopping(run, at.saturating_sub(started.elapsed())) {
            break;
        }
        let fault = run.faults.issue(None, &run.clock);
        pg_ctl(run, &["-m", "immediate", "-w", "stop"])?;
        run.faults.done(fault, &run.clock);
        std::thread::sleep(DOWN_FOR);
        let log = run.options.data_dir.join("server.log");
        pg_ctl(run, &["-l", log.to_str().unwrap(), "-w", "-t", "120", "start"])?;
        restarts += 1;
    }
    Ok(restarts)
}

/// Sleeps `duration`, or less when the load stops; returns false when it stops.
fn sleep_unless_stopping(run: &Run, duration: Duration) -> bool {
    let until = Instant::now() + duration;
    while Instant::now() < until {
        if run.stopping() {
            return false;
        }
        std::thread::sleep(POLL.min(until - Instant::now()));
    }
    !run.stopping()
}

/// Runs pg_ctl on the cluster as the postgres OS user.
fn pg_ctl(run: &Run, args: &[&str]) -> Result<(), String> {
    let pg_ctl = run.options.pg_bin.join("pg_ctl");
    let mut command = as_postgres(&pg_ctl);
    // As scripts/cluster.sh: the server must not inherit RUST_BACKTRACE (pgrx would put
    // backtraces into error details).
    command.arg("-D").arg(&run.options.data_dir).args(args)
        .env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    let output = command.output().map_err(|e| format!("cannot run {}: {e}", pg_ctl.display()))?;
    if !output.status.success() {
        return Err(format!("pg_ctl {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()));
    }
    Ok(())
}

fn as_postgres(program: &Path) -> Command {
    let me = Command::new("id").arg("-un").output().map(|o| o.stdout).unwrap_or_default();
    if me.trim_ascii() == b"postgres" {
        Command::new(program)
    } else {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    }
}
