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
