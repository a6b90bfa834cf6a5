//! Writing a push's rows natively, as COPY does: the heap rows with one `heap_multi_insert`,
//! then each row's index entries (`ExecInsertIndexTuples`), with no statement, plan or
//! executor. Issue 15: through SPI, a 100-event push paid the executor for every row and lost
//! to a plain multi-row INSERT.
//!
//! Guarantees kept (DESIGN.md): G1, all rows of the push in the caller's transaction, the whole
//! batch written before anything else happens; G2's last line of defence, the primary key,
//! checked by the index insert exactly as an INSERT checks it (23505); G14's partial id index,
//! whose predicate is evaluated per row as an INSERT evaluates it.
//!
//! Only for what a plain INSERT of these columns would do and nothing more: [`insert`] answers
//! `false`, and the caller runs its INSERT statement instead, when the table has anything an
//! INSERT would honour and this path does not: triggers, rules, CHECK constraints, generated
//! columns, forced row-level security, another table access method than heap, or columns other
//! than eventstore's. Pushes that carry event ids never come here: they insert with ON CONFLICT
//! (speculative insertion, G14).

use pgrx::pg_sys;
use pgrx::prelude::*;

use super::PendingRow;
use crate::query;

/// The columns of eventstore.events, in the order of [`value`].
const COLUMNS: [&str; 14] = ["instance_id", "aggregate_type", "aggregate_id", "sequence", "event_type",
    "revision", "payload", "creator", "owner", "created_at", "position", "in_tx_order", "id", "metadata"];

/// Writes `rows` (none carrying an event id) into eventstore.events natively; `false` (nothing
/// written) when the table needs the INSERT statement (see the module's header). Run as the
/// table's owner, inside the push's SPI connection.
pub fn insert(rows: &[PendingRow], created_at: pg_sys::TimestampTz, default_creator: &str) -> bool {
    let events = query::relation(c"events");
    // SAFETY: the relation exists (relation() asserted it) and is opened and locked as an INSERT
    // locks it, until the transaction ends; the executor state, result relation and slots are
    // made for it and freed here (an error ends the transaction, which frees its memory and
    // closes what is open); each slot gets one value per attribute of the relation's
    // descriptor, of the attribute's type (checked by name against COLUMNS, whose values
    // `value` builds with the column's type); heap_multi_insert sets each slot's tid, which the
    // index inserts then read.
    unsafe {
        let relation = pg_sys::table_open(events, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
        let Some(columns) = plain_columns(relation) else {
            pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
            return false;
        };
        let estate = pg_sys::CreateExecutorState();
        let result = pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()) as *mut pg_sys::ResultRelInfo;
        (*result).type_ = pg_sys::NodeTag::T_ResultRelInfo;
        pg_sys::InitResultRelInfo(result, relation, 1, std::ptr::null_mut(), 0);
        pg_sys::ExecOpenIndices(result, false);
        let desc = (*relation).rd_att;
        let natts = (*desc).natts as usize;
        let mut slots: Vec<*mut pg_sys::TupleTableSlot> = Vec::with_capacity(rows.len());
        for (n, row) in rows.iter().enumerate() {
            let slot = pg_sys::table_slot_create(relation, std::ptr::null_mut());
            pg_sys::ExecClearTuple(slot);
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
            for (attribute, column) in columns.iter().enumerate() {
                match column.and_then(|c| value(c, row, n, created_at, default_creator)) {
                    Some(datum) => (values[attribute], nulls[attribute]) = (datum, false),
                    None => (values[attribute], nulls[attribute]) = (pg_sys::Datum::from(0usize), true),
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
            slots.push(slot);
        }
        let command = pg_sys::GetCurrentCommandId(true);
        pg_sys::heap_multi_insert(relation, slots.as_mut_ptr(), slots.len() as i32, command, 0,
            std::ptr::null_mut());
        for slot in &slots {
            let _ = crate::pg::insert_index_entries(result, *slot, estate);
        }
        for slot in slots {
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
        pg_sys::ExecCloseIndices(result);
        pg_sys::FreeExecutorState(estate);
        pg_sys::table_close(relation, pg_sys::NoLock as pg_sys::LOCKMODE);
        // As after an INSERT statement: what follows in this transaction sees the rows.
        pg_sys::CommandCounterIncrement();
    }
    true
}

/// For each attribute of the relation (dropped ones `None`), its index in [`COLUMNS`]; `None`
/// when a plain INSERT would do more than this path (see the module's header).
///
/// # Safety
/// `relation` is open.
unsafe fn plain_columns(relation: pg_sys::Relation) -> Option<Vec<Option<usize>>> {
    // SAFETY: by the caller's promise, the relation's fields are valid.
    unsafe {
        let form = (*relation).rd_rel;
        let constraints = (*(*relation).rd_att).constr;
        let refused = !(*relation).trigdesc.is_null()
            || !(*relation).rd_rules.is_null()
            || (*form).relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char
            || (*form).relam != pg_sys::HEAP_TABLE_AM_OID
            || (*form).relforcerowsecurity
            || (!constraints.is_null() && ((*constraints).num_check > 0 || (*constraints).has_generated_stored));
        if refused {
            return None;
        }
        let mut columns = Vec::new();
        let mut seen = [false; COLUMNS.len()];
        for attribute in crate::pg::tuple_desc_attrs((*relation).rd_att) {
            if attribute.attisdropped {
                columns.push(None);
                continue;
            }
            let name = std::ffi::CStr::from_ptr(attribute.attname.data.as_ptr()).to_str().ok()?;
            let column = COLUMNS.iter().position(|c| *c == name)?;
            seen[column] = true;
            columns.push(Some(column));
        }
        seen.iter().all(|s| *s).then_some(columns)
    }
}

/// Column `column` (an index in [`COLUMNS`]) of row `n` of the push: a datum of the column's
/// type, or `None` for NULL.
fn value(column: usize, row: &PendingRow, n: usize, created_at: pg_sys::TimestampTz, default_creator: &str) -> Option<pg_sys::Datum> {
    let c = row.command;
    match COLUMNS[column] {
        "instance_id" => c.instance_id.as_str().into_datum(),
        "aggregate_type" => c.aggregate_type.as_str().into_datum(),
        "aggregate_id" => c.aggregate_id.as_str().into_datum(),
        "sequence" => row.sequence.into_datum(),
        "event_type" => c.event_type.as_str().into_datum(),
        "revision" => c.revision.into_datum(),
        "payload" => c.payload,
        "creator" => c.creator.as_deref().unwrap_or(default_creator).into_datum(),
        "owner" => row.owner.as_str().into_datum(),
        "created_at" => Some(pg_sys::Datum::from(created_at)),
        "position" => row.position.into_datum(),
        "in_tx_order" => (n as i32).into_datum(),
        "id" => c.id.map(pgrx::Uuid::from_bytes).into_datum(),
        "metadata" => c.metadata,
        other => unreachable!("column {other} is in COLUMNS"),
    }
}
