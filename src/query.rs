//! Statements prepared once per backend and run under the snapshot the caller names.
//!
//! Guarantee (DESIGN.md trap 4): a read that follows a lock wait runs under [`Snapshot::Latest`],
//! taken after the wait and after a command-counter step, so it sees every commit of the
//! transaction it waited for and every earlier write of its own transaction. pgrx's `Spi` picks
//! read-only mode by itself, which reuses the statement's snapshot; this module does not.
//!
//! Plans are kept with `SPI_keepplan`, keyed by their SQL text, so each statement is parsed and
//! planned once per backend; the plan cache revalidates them after DDL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::CString;

use pgrx::pg_sys;
use pgrx::prelude::*;

/// Which snapshot a statement runs under.
#[derive(Clone, Copy)]
pub enum Snapshot {
    /// Taken now: every committed transaction and every earlier write of our own. For reads
    /// that follow a lock wait, under any isolation level.
    Latest,
    /// What is committed at the moment each row is read, and this transaction's own writes
    /// (SnapshotSelf): not an MVCC snapshot, so it takes no predicate locks under SERIALIZABLE.
    /// Only for reads of rows whose writers the caller's locks exclude.
    CommittedNow,
    /// What a plain statement would get: a fresh one in READ COMMITTED, the transaction's in
    /// REPEATABLE READ (so a concurrent update is refused there). For writes.
    Statement,
}

/// A statement's argument: its type and its value (`None` is SQL NULL).
pub struct Arg {
    pub type_oid: pg_sys::Oid,
    pub value: Option<pg_sys::Datum>,
}

impl Arg {
    pub fn new<T: IntoDatum>(value: T) -> Self {
        Arg { type_oid: T::type_oid(), value: value.into_datum() }
    }

    pub fn raw(type_oid: pg_sys::Oid, value: Option<pg_sys::Datum>) -> Self {
        Arg { type_oid, value }
    }
}

/// The rows one statement returned, valid until the SPI connection closes.
pub struct Rows {
    table: *mut pg_sys::SPITupleTable,
    count: usize,
}

impl Rows {
    pub fn len(&self) -> usize {
        self.count
    }

    /// Column `column` (from 1) of row `row` (from 0), converted to a Rust value.
    pub fn get<T: FromDatum>(&self, row: usize, column: i32) -> Option<T> {
        let (datum, is_null) = self.datum(row, column);
        // SAFETY: the datum comes from this statement's result; the caller names its type.
        unsafe { T::from_datum(datum, is_null) }
    }

    /// The column named `name` of row `row`.
    pub fn get_named<T: FromDatum>(&self, row: usize, name: &std::ffi::CStr) -> Option<T> {
        // SAFETY: the tuple table is alive until the SPI connection closes.
        let column = unsafe { pg_sys::SPI_fnumber((*self.table).tupdesc, name.as_ptr()) };
        assert!(column > 0, "no column {name:?}");
        self.get(row, column)
    }

    /// Appends every row to `store`, a tuplestore of descriptor `desc` whose live (not dropped)
    /// columns are this statement's columns, in order; with `lead`, led by one more column, an
    /// integer, `lead` in every row (partition_catchup's partition number, so that its
    /// statement is the same as projection_catchup's).
    pub fn put_all(&self, store: *mut pg_sys::Tuplestorestate, desc: pg_sys::TupleDesc, lead: Option<i32>) {
        // SAFETY: desc and store are the materialized result's (live for the call); each row
        // index is below count, and each live column of desc (after the leading integer column
        // when `lead` is given) matches the statement's next column (the caller's promise), so
        // SPI_getbinval reads within the tuple.
        unsafe {
            let natts = (*desc).natts as usize;
            let attributes = crate::pg::tuple_desc_attrs(desc);
            let mut values = vec![pg_sys::Datum::from(0usize); natts];
            let mut nulls = vec![true; natts];
            for row in 0..self.count {
                let tuple = *(*self.table).vals.add(row);
                let mut column = 1;
                let mut lead = lead;
                for (i, attribute) in attributes.iter().enumerate() {
                    if attribute.attisdropped {
                        nulls[i] = true;
                        continue;
                    }
                    if let Some(value) = lead.take() {
                        values[i] = value.into_datum().expect("an integer is never NULL");
                        nulls[i] = false;
                        continue;
                    }
                    values[i] = pg_sys::SPI_getbinval(tuple, (*self.table).tupdesc, column, &mut nulls[i]);
                    column += 1;
                }
                pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
            }
        }
    }

    /// Column `column` of row `row` copied into the memory context that was current when the
    /// SPI connection opened, so that it outlives the connection.
    pub fn transfer(&self, row: usize, column: i32) -> Option<pg_sys::Datum> {
        let (datum, is_null) = self.datum(row, column);
        if is_null {
            return None;
        }
        // SAFETY: column exists in the result (datum() asserted the row); SPI_datumTransfer copies
        // into the context that was current when the SPI connection opened.
        unsafe {
            let type_oid = pg_sys::SPI_gettypeid((*self.table).tupdesc, column);
            let mut len = 0i16;
            let mut by_val = false;
            pg_sys::get_typlenbyval(type_oid, &mut len, &mut by_val);
            Some(pg_sys::SPI_datumTransfer(datum, by_val, len.into()))
        }
    }

    fn datum(&self, row: usize, column: i32) -> (pg_sys::Datum, bool) {
        assert!(row < self.count, "row {row} of {}", self.count);
        let mut is_null = false;
        // SAFETY: row is below count (asserted); the tuple table lives until SPI closes.
        let datum = unsafe {
            let tuple = *(*self.table).vals.add(row);
            pg_sys::SPI_getbinval(tuple, (*self.table).tupdesc, column, &mut is_null)
        };
        (datum, is_null)
    }
}

thread_local! {
    static PLANS: RefCell<HashMap<String, pg_sys::SPIPlanPtr>> = RefCell::new(HashMap::new());
}

/// The oid of relation `name` in schema eventstore (a syscache lookup, no SQL).
pub fn relation(name: &std::ffi::CStr) -> pg_sys::Oid {
    // SAFETY: syscache lookups by name; a missing schema raises an ERROR (missing_ok = false).
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"eventstore".as_ptr(), false);
        let oid = pg_sys::get_relname_relid(name.as_ptr(), namespace);
        assert!(oid != pg_sys::InvalidOid, "eventstore.{} is missing", name.to_string_lossy());
        oid
    }
}

/// Whether relation `name` exists in schema eventstore (a syscache lookup, no SQL).
pub fn relation_exists(name: &std::ffi::CStr) -> bool {
    // SAFETY: syscache lookups by name; a missing schema raises an ERROR (missing_ok = false).
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"eventstore".as_ptr(), false);
        pg_sys::get_relname_relid(name.as_ptr(), namespace) != pg_sys::InvalidOid
    }
}

/// Runs `f` inside an SPI connection; values read with [`Rows::get`] must be copied out
/// before it returns.
pub fn with_spi<R>(f: impl FnOnce() -> R) -> R {
    Spi::connect(|_client| f())
}

/// Runs `sql` (planned once per backend) under `snapshot`. Must be called inside [`with_spi`].
pub fn run(sql: &str, args: &[Arg], snapshot: Snapshot) -> Rows {
    let plan = plan_for(sql, args);
    let mut values: Vec<pg_sys::Datum> =
        args.iter().map(|a| a.value.unwrap_or(pg_sys::Datum::from(0usize))).collect();
    let nulls: Vec<std::ffi::c_char> =
        args.iter().map(|a| if a.value.is_some() { b' ' } else { b'n' } as std::ffi::c_char).collect();
    // SAFETY: values and nulls have one entry per planned argument; the snapshot is fresh.
    let status = unsafe {
        match snapshot {
            // The mutant reads with the statement's snapshot, taken before any lock wait (trap 4).
            Snapshot::Latest | Snapshot::CommittedNow if crate::mutants::STALE_SNAPSHOT => {
                pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), true, 0)
            }
            Snapshot::Latest => {
                pg_sys::CommandCounterIncrement();
                pg_sys::SPI_execute_snapshot(
                    plan,
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    pg_sys::GetLatestSnapshot(),
                    std::ptr::null_mut(),
                    false,
                    true,
                    0,
                )
            }
            Snapshot::CommittedNow => {
                pg_sys::CommandCounterIncrement();
                pg_sys::SPI_execute_snapshot(
                    plan,
                    values.as_mut_ptr(),
                    nulls.as_ptr(),
                    &raw mut pg_sys::SnapshotSelfData,
                    std::ptr::null_mut(),
                    false,
                    true,
                    0,
                )
            }
            Snapshot::Statement => {
                pg_sys::SPI_execute_plan(plan, values.as_mut_ptr(), nulls.as_ptr(), false, 0)
            }
        }
    };
    assert!(status >= 0, "SPI failed with status {status} for: {sql}");
    // SAFETY: SPI's globals describe the statement that just ran.
    unsafe { Rows { table: pg_sys::SPI_tuptable, count: pg_sys::SPI_processed as usize } }
}

extern "C-unwind" {
    /// executor/tstoreReceiver.h (the same from 14 to 18); not in pgrx's bindings.
    fn SetTuplestoreDestReceiverParams(receiver: *mut pg_sys::DestReceiver, store: *mut pg_sys::Tuplestorestate,
        context: pg_sys::MemoryContext, detoast: bool, target: pg_sys::TupleDesc,
        map_failure_message: *const std::ffi::c_char);
}

/// A set-returning function's materialized result: the tuplestore and its descriptor, as
/// `InitMaterializedSRF` set them up.
#[derive(Clone, Copy)]
pub struct Sink {
    pub store: *mut pg_sys::Tuplestorestate,
    pub desc: pg_sys::TupleDesc,
}

impl Sink {
    /// The sink of a function call set up with `InitMaterializedSRF`.
    ///
    /// # Safety
    /// `result` is that call's ReturnSetInfo, after InitMaterializedSRF.
    pub unsafe fn of(result: *const pg_sys::ReturnSetInfo) -> Sink {
        // SAFETY: by the caller's promise.
        unsafe { Sink { store: (*result).setResult, desc: (*result).setDesc } }
    }

    /// The number (from 1) of the column named `name` among the live (not dropped) columns: its
    /// number in a statement whose columns match the sink's by position.
    pub fn live_column(&self, name: &std::ffi::CStr) -> i32 {
        // SAFETY: desc is the result's descriptor, alive for the call.
        let attributes = unsafe { crate::pg::tuple_desc_attrs(self.desc) };
        let live = attributes.iter().filter(|a| !a.attisdropped);
        let position = live.map(|a| {
            // SAFETY: attname is a NUL-terminated NameData.
            unsafe { std::ffi::CStr::from_ptr(a.attname.data.as_ptr()) }
        }).position(|n| n == name).unwrap_or_else(|| panic!("no column {name:?} in the result"));
        position as i32 + 1
    }
}

/// What [`run_into`] wrote: the number of rows, and the values of the integer column it was
/// asked to watch in the first and the last row.
pub struct Written {
    pub count: usize,
    pub first: Option<i64>,
    pub last: Option<i64>,
}

/// A DestReceiver that passes each row on to PostgreSQL's tuplestore receiver and notes one
/// bigint column of the first and the last row. `base` comes first, so PostgreSQL may use a
/// pointer to this as a `DestReceiver *`.
#[repr(C)]
struct Watching {
    base: pg_sys::DestReceiver,
    inner: *mut pg_sys::DestReceiver,
    column: i32,
    count: usize,
    first: Option<i64>,
    last: Option<i64>,
}

#[pg_guard]
unsafe extern "C-unwind" fn watching_receive(slot: *mut pg_sys::TupleTableSlot, this: *mut pg_sys::DestReceiver) -> bool {
    // SAFETY: `this` is the Watching run_into made (its first field is the DestReceiver); slot is
    // the executor's current row, with at least `column` attributes (the caller's promise).
    unsafe {
        let watching = &mut *(this as *mut Watching);
        let mut is_null = false;
        let value = pg_sys::slot_getattr(slot, watching.column, &mut is_null);
        let value = (!is_null).then(|| value.value() as i64);
        watching.count += 1;
        if watching.first.is_none() {
            watching.first = value;
        }
        watching.last = value;
        let inner = watching.inner;
        (*inner).receiveSlot.expect("tuplestore receiver")(slot, inner)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn watching_startup(this: *mut pg_sys::DestReceiver, operation: i32, desc: pg_sys::TupleDesc) {
    // SAFETY: as in watching_receive.
    unsafe {
        let inner = (*(this as *mut Watching)).inner;
        (*inner).rStartup.expect("tuplestore receiver")(inner, operation, desc)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn watching_shutdown(this: *mut pg_sys::DestReceiver) {
    // SAFETY: as in watching_receive.
    unsafe {
        let inner = (*(this as *mut Watching)).inner;
        (*inner).rShutdown.expect("tuplestore receiver")(inner)
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn watching_destroy(_this: *mut pg_sys::DestReceiver) {}

/// Runs `sql` (planned once per backend, a query) under `snapshot` and appends its rows
/// straight to `sink` as the executor produces them: no SPI tuple table, no copy of each value,
/// one tuple formed per row by the tuplestore. The statement's columns must match the sink's
/// live columns by position (a dropped column of the sink's row type is skipped, as PL/pgSQL's
/// RETURN QUERY does). Notes bigint column `watched` (from 1) of the first and last row. Must be
/// called inside [`with_spi`].
pub fn run_into(sql: &str, args: &[Arg], snapshot: Snapshot, sink: Sink, watched: i32) -> Written {
    let plan = plan_for(sql, args);
    // SAFETY: the parameter list has one entry per planned argument; the tuplestore receiver is
    // PostgreSQL's, set up for the sink's store and descriptor (the store keeps rows in its own
    // memory context; the current one only holds the receiver's workspace for this call); the
    // snapshot pushed is popped on every path that returns (an error unwinds the transaction's
    // snapshot stack).
    unsafe {
        let params = pg_sys::makeParamList(args.len() as i32);
        let entries = (*params).params.as_mut_slice(args.len());
        for (entry, arg) in entries.iter_mut().zip(args) {
            entry.value = arg.value.unwrap_or(pg_sys::Datum::from(0usize));
            entry.isnull = arg.value.is_none();
            entry.pflags = pg_sys::PARAM_FLAG_CONST as u16;
            entry.ptype = arg.type_oid;
        }
        let inner = pg_sys::CreateDestReceiver(pg_sys::CommandDest::DestTuplestore);
        SetTuplestoreDestReceiverParams(inner, sink.store, pg_sys::CurrentMemoryContext, false,
            sink.desc, c"the batch's columns do not match the result type".as_ptr());
        let mut watching = Watching {
            base: pg_sys::DestReceiver {
                receiveSlot: Some(watching_receive),
                rStartup: Some(watching_startup),
                rShutdown: Some(watching_shutdown),
                rDestroy: Some(watching_destroy),
                mydest: pg_sys::CommandDest::DestTuplestore,
            },
            inner,
            column: watched,
            count: 0,
            first: None,
            last: None,
        };
        let mut options: pg_sys::SPIExecuteOptions = std::mem::zeroed();
        options.params = params;
        // read_only: SPI runs the plan under the active snapshot, the one pushed here.
        options.read_only = true;
        options.dest = &raw mut watching.base;
        let pushed = match snapshot {
            // The mutant reads with the statement's snapshot, taken before any lock wait (trap 4).
            Snapshot::Latest | Snapshot::CommittedNow if crate::mutants::STALE_SNAPSHOT => false,
            Snapshot::Latest => {
                pg_sys::CommandCounterIncrement();
                pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot());
                true
            }
            Snapshot::CommittedNow | Snapshot::Statement => {
                panic!("run_into reads under Snapshot::Latest only")
            }
        };
        let status = pg_sys::SPI_execute_plan_extended(plan, &options);
        if pushed {
            pg_sys::PopActiveSnapshot();
        }
        assert!(status >= 0, "SPI failed with status {status} for: {sql}");
        pg_sys::pfree(inner.cast());
        Written { count: watching.count, first: watching.first, last: watching.last }
    }
}

fn plan_for(sql: &str, args: &[Arg]) -> pg_sys::SPIPlanPtr {
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(sql).copied()) {
        return plan;
    }
    let text = CString::new(sql).expect("statement text has no NUL byte");
    let mut types: Vec<pg_sys::Oid> = args.iter().map(|a| a.type_oid).collect();
    // SAFETY: text is NUL-terminated; types has one oid per argument.
    let plan = unsafe {
        let plan = pg_sys::SPI_prepare(text.as_ptr(), types.len() as i32, types.as_mut_ptr());
        assert!(!plan.is_null(), "could not prepare: {sql}");
        pg_sys::SPI_keepplan(plan);
        plan
    };
    PLANS.with(|plans| plans.borrow_mut().insert(sql.to_owned(), plan));
    plan
}
