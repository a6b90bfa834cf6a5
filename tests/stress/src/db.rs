//! Connections. Every client of the harness connects over TCP to 127.0.0.1, names itself in
//! application_name (the killer finds its victims by that name), remembers its backend pid
//! (to tell a fault the harness caused from one it did not), and reconnects on its own after
//! a fault until the server has been unreachable for `GIVE_UP_AFTER`.

use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

/// How long a client keeps trying to reach the server before the run fails.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(120);
const RETRY_EVERY: Duration = Duration::from_millis(100);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// No statement of the harness should ever wait this long: a hang is reported, not waited out.
const SERVER_OPTIONS: &str = "-c statement_timeout=60s";

/// A connection and the pid of its backend.
pub struct Session {
    pub client: Client,
    pub pid: i32,
    /// A tick of the trace clock taken before connecting: faults before it are not ours.
    pub since: u64,
}

/// Connects as `name`, retrying while the server is down or starting up.
pub fn connect(port: u16, name: &str, since: u64) -> Result<Session, String> {
    let deadline = Instant::now() + GIVE_UP_AFTER;
    loop {
        match try_connect(port, name, since) {
            Ok(session) => return Ok(session),
            Err(_) if Instant::now() < deadline => std::thread::sleep(RETRY_EVERY),
            Err(e) => return Err(format!("{name}: cannot connect to 127.0.0.1:{port}: {e}")),
        }
    }
}

fn try_connect(port: u16, name: &str, since: u64) -> Result<Session, postgres::Error> {
    let mut client = Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("eventstore")
        .application_name(name)
        .connect_timeout(CONNECT_TIMEOUT)
        .options(SERVER_OPTIONS)
        .connect(NoTls)?;
    let pid = client.query_one("SELECT pg_backend_pid()", &[])?.get(0);
    Ok(Session { client, pid, since })
}

/// What an error means to the client that got it.
pub enum Failure {
    /// The connection is gone (killed backend, crashed or restarting server): reconnect.
    Fault,
    /// A serialization failure under REPEATABLE READ (G10 allows it): roll back, go on.
    Retry,
    /// Anything else: a bug in the extension or the harness, reported.
    Bug(String),
}

pub fn classify(error: &postgres::Error) -> Failure {
    let Some(db) = error.as_db_error() else {
        return if error.is_closed() || is_io(error) { Failure::Fault } else { Failure::Bug(error.to_string()) };
    };
    let code = db.code().code();
    if code.starts_with("57P") || code.starts_with("08") {
        Failure::Fault
    } else if *db.code() == SqlState::T_R_SERIALIZATION_FAILURE {
        Failure::Retry
    } else {
        Failure::Bug(format!("{code} {}{}", db.message(),
            db.detail().map(|d| format!(" ({d})")).unwrap_or_default()))
    }
}

fn is_io(error: &postgres::Error) -> bool {
    std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
}

/// What went wrong on one client over the run.
#[derive(Default)]
pub struct Tally {
    /// Connections lost to a fault the harness issued.
    pub faults: u64,
    /// Connections lost with no fault of ours to explain them (a crashed backend?).
    pub dropped: u64,
    /// Serialization failures, rolled back and retried.
    pub retries: u64,
    /// Unexpected errors, with their SQLSTATE and message.
    pub bugs: Vec<String>,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.faults += other.faults;
        self.dropped += other.dropped;
        self.retries += other.retries;
        self.bugs.extend(other.bugs);
    }
}

/// How a failed statement ended the transaction.
pub enum Ended {
    /// The backend is gone; it let go of its locks after `at` (a tick of the trace clock).
    Lost { at: u64 },
    /// The transaction was rolled back by the client, after `at`.
    RolledBack { at: u64 },
}

/// One client thread's connection: connects on demand and reconnects after a fault.
pub struct Link<'r> {
    run: &'r crate::Run,
    name: String,
    session: Option<Session>,
    pub tally: Tally,
}

impl<'r> Link<'r> {
    pub fn new(run: &'r crate::Run, name: String) -> Self {
        Link { run, name, session: None, tally: Tally::default() }
    }

    pub fn client(&mut self) -> Result<&mut Client, String> {
        if self.session.is_none() {
            let since = self.run.clock.tick();
            self.session = Some(connect(self.run.options.port, &self.name, since)?);
        }
        Ok(&mut self.session.as_mut().unwrap().client)
    }

    /// The pid of the session's backend (connecting first when there is none).
    pub fn pid(&mut self) -> Result<i32, String> {
        self.client()?;
        Ok(self.session.as_ref().expect("connected").pid)
    }

    /// Deals with a failed statement inside a transaction: after a fault the session is
    /// dropped (the next `client()` reconnects); after an error the transaction is rolled back.
    pub fn failed(&mut self, error: &postgres::Error) -> Ended {
        let clock = &self.run.clock;
        match classify(error) {
            Failure::Fault => return self.lost(),
            Failure::Retry => self.tally.retries += 1,
            Failure::Bug(message) => self.tally.bugs.push(format!("{}: {message}", self.name)),
        }
        let at = clock.tick();
        match self.session.as_mut().map(|s| s.client.batch_execute("ROLLBACK")) {
            Some(Err(_)) => self.lost(),
            _ => Ended::RolledBack { at },
        }
    }

    fn lost(&mut self) -> Ended {
        let explained = self.session.take().and_then(|s| self.run.faults.first_for(s.pid, s.since));
        if explained.is_some() { self.tally.faults += 1 } else { self.tally.dropped += 1 }
        Ended::Lost { at: explained.unwrap_or_else(|| self.run.clock.tick()) }
    }
}
