-- The read model `invoices` and its handler, for the psql worker (partitioned_step.sql): the
-- same table and the same checks as the Python workers' (python/worker.py). Run once, before
-- the workers start. No EXCEPTION block (a subtransaction, G8): a failing event raises, and the
-- worker rolls its transaction back.
CREATE TABLE IF NOT EXISTS invoices (
    instance_id text    NOT NULL,
    invoice_id  text    NOT NULL,
    total_cents bigint  NOT NULL,
    lines       integer NOT NULL DEFAULT 0,
    paid        boolean NOT NULL DEFAULT false,
    version     bigint  NOT NULL,  -- the sequence of the invoice's last event applied
    PRIMARY KEY (instance_id, invoice_id)
);

-- Applies the event at `event_position` to the read model, or raises: an amount that is not a
-- whole number (a poison event: '12.50'::bigint fails), an unknown event type, or an event that
-- is not the invoice's next one (a skipped, repeated or reordered event fails loudly).
CREATE OR REPLACE FUNCTION invoices_apply(event_position bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    e eventstore.events;
    amount bigint;
    applied integer;
BEGIN
    SELECT * INTO STRICT e FROM eventstore.events WHERE position = event_position;
    amount := coalesce((e.payload ->> 'amount_cents')::bigint, 0);
    CASE e.event_type
        WHEN 'invoice.created' THEN
            INSERT INTO invoices (instance_id, invoice_id, total_cents, version)
            SELECT e.instance_id, e.aggregate_id, amount, e.sequence WHERE e.sequence = 1;
        WHEN 'invoice.line_added' THEN
            UPDATE invoices SET total_cents = total_cents + amount, lines = lines + 1, version = e.sequence
             WHERE instance_id = e.instance_id AND invoice_id = e.aggregate_id AND version = e.sequence - 1;
        WHEN 'invoice.paid' THEN
            UPDATE invoices SET paid = true, version = e.sequence
             WHERE instance_id = e.instance_id AND invoice_id = e.aggregate_id AND version = e.sequence - 1;
        ELSE
            RAISE EXCEPTION '%/% seq %: unknown event type %', e.instance_id, e.aggregate_id, e.sequence, e.event_type;
    END CASE;
    GET DIAGNOSTICS applied = ROW_COUNT;
    IF applied <> 1 THEN
        RAISE EXCEPTION '%/% seq %: not the invoice''s next event', e.instance_id, e.aggregate_id, e.sequence;
    END IF;
END
$$;
