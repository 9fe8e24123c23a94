-- skor: objects shared by every captured table. Idempotent; `skor install`
-- runs it in one transaction after taking skor's install lock, followed by
-- drop_triggers.sql and one CREATE TRIGGER per table and operation.
-- Everything skor creates lives in the schema `skor`.

CREATE SCHEMA IF NOT EXISTS skor;

-- Payloads too large for NOTIFY (8000 bytes or more) wait here; the
-- notification carries only their id and the daemon deletes each row as it
-- fetches it.
CREATE TABLE IF NOT EXISTS skor.oversized_payload (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload text NOT NULL
);

-- Any role that writes to a captured table runs the trigger, so any role
-- may add a payload (never read one back).
GRANT USAGE ON SCHEMA skor TO PUBLIC;
GRANT INSERT ON skor.oversized_payload TO PUBLIC;
GRANT USAGE ON SEQUENCE skor.oversized_payload_id_seq TO PUBLIC;

-- `data` of an event: the whole row, or the listed columns in the listed
-- order. Built as text from row_to_json's own output so the keys keep the
-- configured order and the compact formatting of row_to_json; a column
-- dropped since install yields null instead of an error in the user's
-- transaction.
CREATE OR REPLACE FUNCTION skor.pick(row_json json, columns text[]) RETURNS json
LANGUAGE sql IMMUTABLE AS $skor$
    SELECT CASE WHEN coalesce(cardinality(columns), 0) = 0 THEN row_json ELSE
        (SELECT ('{' || string_agg(to_json(c.col)::text || ':'
                       || coalesce(row_json -> c.col, 'null'::json)::text,
                       ',' ORDER BY c.pos) || '}')::json
           FROM unnest(columns) WITH ORDINALITY AS c(col, pos))
    END
$skor$;

-- Notify mode's trigger function. Arguments: the NOTIFY channel, then the
-- columns to publish (none means every column). The payload is byte for
-- byte the one the original skor's generated functions produced.
CREATE OR REPLACE FUNCTION skor.notify() RETURNS trigger
LANGUAGE plpgsql AS $skor$
DECLARE
    row_json json;
    data json;
    payload text;
    ref bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_json := row_to_json(OLD);
    ELSE
        row_json := row_to_json(NEW);
    END IF;
    IF TG_NARGS <= 1 THEN
        data := row_json;
    ELSE
        data := skor.pick(row_json, TG_ARGV[1:TG_NARGS - 1]);
    END IF;
    payload := json_build_object('table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA,
                                 'op', TG_OP, 'data', data)::text;
    IF octet_length(payload) < 8000 THEN
        PERFORM pg_notify(TG_ARGV[0], payload);
    ELSE
        ref := nextval('skor.oversized_payload_id_seq');
        INSERT INTO skor.oversized_payload (id, payload) VALUES (ref, payload);
        PERFORM pg_notify(TG_ARGV[0], json_build_object('skor_ref', ref)::text);
    END IF;
    RETURN NULL;
END
$skor$;

-- Durable mode's event log: every change of a durable table, written in
-- the changing transaction, so an event exists if and only if its change
-- committed. The daemon deletes a row once every sink it was routed to
-- confirmed it (or marks it delivered when a retention is configured).
CREATE TABLE IF NOT EXISTS skor.event_log (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    channel text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    op text NOT NULL,
    -- The row key, `{"col":value,...}`, or NULL for a table without one.
    row_key text,
    -- One of skor's 64 key partitions: each is delivered by one daemon at
    -- a time, which keeps the events of one key in order.
    part smallint NOT NULL,
    payload text NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'dead', 'delivered')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error text,
    -- Sinks that confirmed a dead-lettered event, so a replay skips them.
    done_sinks text[] NOT NULL DEFAULT '{}',
    delivered_at timestamptz
);
CREATE INDEX IF NOT EXISTS event_log_pending ON skor.event_log (id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS event_log_dead ON skor.event_log (id) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS event_log_delivered
    ON skor.event_log (delivered_at) WHERE state = 'delivered';

-- Writers of durable tables add events; only the owner reads them.
GRANT INSERT ON skor.event_log TO PUBLIC;
GRANT USAGE ON SEQUENCE skor.event_log_id_seq TO PUBLIC;

-- Durable mode's trigger function. Arguments: the table's channel, the
-- number k of key columns, the k key columns, then the columns to publish
-- (none means every column). The payload is the one notify mode sends; the
-- NOTIFY that follows carries nothing and only wakes the daemon up.
CREATE OR REPLACE FUNCTION skor.capture() RETURNS trigger
LANGUAGE plpgsql AS $skor$
DECLARE
    row_json json;
    data json;
    key_count integer := TG_ARGV[1]::integer;
    row_key text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        row_json := row_to_json(OLD);
    ELSE
        row_json := row_to_json(NEW);
    END IF;
    IF key_count > 0 THEN
        row_key := skor.pick(row_json, TG_ARGV[2:1 + key_count])::text;
    END IF;
    IF TG_NARGS <= 2 + key_count THEN
        data := row_json;
    ELSE
        data := skor.pick(row_json, TG_ARGV[2 + key_count:TG_NARGS - 1]);
    END IF;
    INSERT INTO skor.event_log (channel, schema_name, table_name, op, row_key, part, payload)
    VALUES (TG_ARGV[0], TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, row_key,
            hashtext(coalesce(row_key, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME)) & 63,
            json_build_object('table', TG_TABLE_NAME, 'schema', TG_TABLE_SCHEMA, 'op', TG_OP,
                              'data', data)::text);
    PERFORM pg_notify('skor_event_log', '');
    RETURN NULL;
END
$skor$;

-- Creates the durable trigger `name` for `op` on `tbl`. `key_columns` NULL
-- means the table's primary key, looked up now; a table without one is
-- ordered as a whole.
CREATE OR REPLACE FUNCTION skor.create_capture_trigger(
    tbl regclass, name text, op text, channel text, key_columns text[], columns text[]
) RETURNS void
LANGUAGE plpgsql AS $skor$
DECLARE
    args text[];
BEGIN
    IF key_columns IS NULL THEN
        SELECT coalesce(array_agg(a.attname::text ORDER BY k.ord), '{}')
          INTO key_columns
          FROM pg_index i
         CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = tbl AND i.indisprimary;
    END IF;
    args := ARRAY[channel, cardinality(key_columns)::text] || key_columns || columns;
    EXECUTE format('CREATE TRIGGER %I AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION skor.capture(%s)',
                   name, op, tbl,
                   (SELECT string_agg(quote_literal(a), ', ' ORDER BY o)
                      FROM unnest(args) WITH ORDINALITY AS x(a, o)));
END
$skor$;
