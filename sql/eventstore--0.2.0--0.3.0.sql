-- eventstore 0.2.0 -> 0.3.0 (ALTER EXTENSION eventstore UPDATE).
--
-- Every schema change of release 0.3.0 is here, in the order it was made; sql/eventstore.sql is
-- the same schema for a fresh install, and tests/upgrade.sh checks that both end equal.
-- sql/eventstore--0.2.0.sql is 0.2.0's install script exactly as it was released: never edit it.

-- command(revision => 40000) raised 22003 from the cast to smallint; push documents 22023 for a
-- revision out of 1..32767. The check is now the one push makes, in a native function.
CREATE FUNCTION eventstore.checked_revision(revision integer) RETURNS smallint
LANGUAGE c IMMUTABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS 'MODULE_PATHNAME', 'checked_revision_wrapper';
COMMENT ON FUNCTION eventstore.checked_revision(integer) IS
    'A revision as eventstore.command stores it: NULL, or 1..32767 (22023 otherwise).';
REVOKE ALL ON FUNCTION eventstore.checked_revision(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION eventstore.checked_revision(integer) TO eventstore_writer;

CREATE OR REPLACE FUNCTION eventstore.command(
    instance_id       text,
    aggregate_type    text,
    aggregate_id      text,
    event_type        text,
    payload           jsonb   DEFAULT NULL,
    revision          integer DEFAULT 1,
    creator           text    DEFAULT NULL,
    owner             text    DEFAULT NULL,
    expected_sequence bigint  DEFAULT NULL
) RETURNS eventstore.command
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ROW(instance_id, aggregate_type, aggregate_id, event_type,
           eventstore.checked_revision(revision), payload, creator, owner, expected_sequence
          )::eventstore.command;
