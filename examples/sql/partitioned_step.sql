-- one step of a partitioned worker, in psql (psql -v tenant=acme -f partitioned_step.sql)
BEGIN;
SELECT count(*) AS got, min(partition) AS partition, min(position) AS position
  FROM eventstore.partition_catchup('invoices', :'tenant', 1) \gset
\if :got
    SELECT invoices_apply(:position);   -- the handler, in this transaction
    \if :ERROR
        ROLLBACK;
        -- reported in a transaction of its own, which the rollback cannot undo
        SELECT eventstore.projection_failed('invoices', :'tenant', :partition, :'LAST_ERROR_MESSAGE', :position);
    \else
        COMMIT;
    \endif
\else
    -- nothing for this worker now: caught up, or the rest is in partitions other workers hold
    COMMIT;
    \echo idle
\endif
