-- skor: what `skor backfill` needs. Idempotent; part of `skor install`,
-- after install.sql.

-- Where each backfill stands, one row per table and condition (`--where`),
-- updated in the transaction that sends a batch: a batch's events exist if
-- and only if its progress does, so a backfill stopped anyhow resumes after
-- the last batch it committed, sending nothing twice and skipping nothing.
CREATE TABLE IF NOT EXISTS skor.backfill (
    table_name text NOT NULL,
    condition text NOT NULL DEFAULT '',
    -- The key of the last row sent, each column as text; NULL before the
    -- first batch.
    last_key text[],
    rows_sent bigint NOT NULL DEFAULT 0,
    -- The rows there were to send when it started.
    rows_total bigint NOT NULL DEFAULT 0,
    started_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (table_name, condition)
);

-- Wal mode's backfilled rows: the publication carries this table, and the
-- daemon turns each row inserted here into a READ event of the table it
-- names, in commit order with the table's own changes. A batch deletes its
-- rows before it commits, so the table stays empty. Only skor's owner can
-- write it (privileges.sql), so no other role can forge an event.
CREATE TABLE IF NOT EXISTS skor.wal_backfill (
    id bigserial PRIMARY KEY,
    channel text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    row_key text,
    payload text NOT NULL
);

-- Notify mode's backfilled row: NOTIFY, or for a payload too large for it
-- the same reference skor.notify() sends.
CREATE OR REPLACE FUNCTION skor.notify_payload(channel pg_catalog.text, payload pg_catalog.text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $skor$
DECLARE
    token pg_catalog.text;
    ref pg_catalog.int8;
BEGIN
    IF pg_catalog.octet_length(payload) OPERATOR(pg_catalog.<) 8000 THEN
        PERFORM pg_catalog.pg_notify(channel, payload);
    ELSE
        token := pg_catalog.gen_random_uuid()::pg_catalog.text;
        INSERT INTO skor.oversized_payload (channel, token, payload)
        VALUES (channel, token, payload)
        RETURNING id INTO ref;
        PERFORM pg_catalog.pg_notify(channel, pg_catalog.json_build_object(
            'skor_ref', ref, 'channel', channel, 'token', token)::pg_catalog.text);
    END IF;
END
$skor$;
