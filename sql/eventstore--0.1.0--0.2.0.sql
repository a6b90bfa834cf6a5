-- eventstore 0.1.0 -> 0.2.0: ALTER EXTENSION eventstore UPDATE TO '0.2.0'.
-- Brings a 0.1.0 schema to exactly what CREATE EXTENSION creates in 0.2.0 (tests/upgrade.sh
-- compares the two). Keeps every event, position, checkpoint.
\echo Use "ALTER EXTENSION eventstore UPDATE" to load this file. \quit
