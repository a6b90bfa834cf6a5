//! In-process tests (`cargo pgrx test`): the logic of one backend. Behaviour across
//! connections is tested in tests/ (integration) and tests/isolation (specs).
use pgrx::prelude::*;

#[pg_test]
fn push_numbers_a_new_aggregate_from_one() {
    let seq = Spi::get_one::<i64>(
        "SELECT max(sequence) FROM eventstore.push(ARRAY[
            eventstore.command('t', 'user', 'u1', 'user.added'),
            eventstore.command('t', 'user', 'u1', 'user.renamed')])",
    );
    assert_eq!(seq, Ok(Some(2)));
}
