-- skor: objects shared by every captured table. Idempotent; `skor install`
-- runs it in one transaction after taking skor's install lock, followed by
-- drop_triggers.sql and one trigger per table and operation.
-- Everything skor creates lives in the schema `skor`, owned by the role that
-- installs it.
--
-- Security model (README, "Security model"): the trigger functions run
-- inside other roles' transactions, so they are SECURITY DEFINER with a
-- pinned search_path and call only schema-qualified pg_catalog objects; no
-- other role gets any privilege on skor's schema, tables, sequences or
-- functions. A writer of a captured table needs nothing from skor: the
-- trigger writes as skor's owner.

-- Refuse to build on objects another role owns: whoever owns them could
-- change what runs inside every captured write.
DO $skor$
DECLARE
    found record;
BEGIN
    FOR found IN
        SELECT 'schema skor' AS what, n.nspowner AS owner
          FROM pg_catalog.pg_namespace n
         WHERE n.nspname OPERATOR(pg_catalog.=) 'skor'
        UNION ALL
        SELECT pg_catalog.format('%s skor.%I',
                   CASE c.relkind WHEN 'S' THEN 'sequence' WHEN 'i' THEN 'index'
                                  WHEN 'v' THEN 'view' ELSE 'table' END, c.relname),
               c.relowner
          FROM pg_catalog.pg_class c
          JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
         WHERE n.nspname OPERATOR(pg_catalog.=) 'skor'
        UNION ALL
        SELECT pg_catalog.format('function %s', p.oid::pg_catalog.regprocedure), p.proowner
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace
         WHERE n.nspname OPERATOR(pg_catalog.=) 'skor'
        UNION ALL
        SELECT pg_catalog.format('type skor.%I', t.typname), t.typowner
          FROM pg_catalog.pg_type t
          JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) t.typnamespace
         WHERE n.nspname OPERATOR(pg_catalog.=) 'skor'
           AND t.typrelid OPERATOR(pg_catalog.=) 0 AND t.typelem OPERATOR(pg_catalog.=) 0
    LOOP
        IF found.owner OPERATOR(pg_catalog.<>) current_user::pg_catalog.regrole::pg_catalog.oid THEN
            RAISE EXCEPTION 'skor install: % belongs to role %, not to %',
                found.what, found.owner::pg_catalog.regrole, current_user
                USING HINT = 'install as the role that owns skor''s objects, or have an administrator '
                             'check and drop the object: it would run inside every captured write';
        END IF;
    END LOOP;
END
$skor$;

CREATE SCHEMA IF NOT EXISTS skor;

-- Payloads too large for NOTIFY (8000 bytes or more) wait here; the
-- notification carries their id, channel and a random token, and the daemon
-- deletes the row as it fetches it after checking all three.
CREATE TABLE IF NOT EXISTS skor.oversized_payload (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    payload text NOT NULL
);
-- Added to installs made before the reference carried them.
ALTER TABLE skor.oversized_payload ADD COLUMN IF NOT EXISTS channel text NOT NULL DEFAULT '';
ALTER TABLE skor.oversized_payload ADD COLUMN IF NOT EXISTS token text NOT NULL DEFAULT '';

-- Numbers that make payloads unique where a table asks for it
-- (`unique_payloads`): PostgreSQL merges identical notifications of one
-- transaction.
CREATE SEQUENCE IF NOT EXISTS skor.payload_seq;

-- `data` of an event: the whole row, or the listed columns in the listed
-- order. Built as text from row_to_json's own output so the keys keep the
-- configured order and the compact formatting of row_to_json; a column
-- dropped since install yields null instead of an error in the user's
-- transaction. `row_value` is the row itself, `row_json` its row_to_json.
--
-- Reading a value back out of `row_json` parses it, and json's parser
-- refuses some escapes a json column may hold (`\u0000`, a lone surrogate
-- `\ud800`): the writer's statement would fail. Every such escape starts
-- with `\u`, so a row without one is read back (which cannot fail), and a
-- row with one takes its columns from the row itself, each rendered by
-- to_json as row_to_json renders it, parsing nothing.
DROP FUNCTION IF EXISTS skor.pick(pg_catalog.json, pg_catalog.text[]);
CREATE OR REPLACE FUNCTION skor.pick(row_value anyelement, row_json pg_catalog.json,
                                     columns pg_catalog.text[])
RETURNS pg_catalog.json
LANGUAGE plpgsql STABLE AS $skor$
DECLARE
    picked pg_catalog.text;
BEGIN
    IF coalesce(pg_catalog.cardinality(columns), 0) OPERATOR(pg_catalog.=) 0 THEN
        RETURN row_json;
    END IF;
    IF pg_catalog.strpos(row_json::pg_catalog.text, '\u') OPERATOR(pg_catalog.=) 0 THEN
        RETURN (SELECT ('{' OPERATOR(pg_catalog.||) pg_catalog.string_agg(
                        pg_catalog.to_json(c.col)::pg_catalog.text OPERATOR(pg_catalog.||) ':'
                        OPERATOR(pg_catalog.||)
                        coalesce(row_json OPERATOR(pg_catalog.->) c.col, 'null'::pg_catalog.json)::pg_catalog.text,
                        ',' ORDER BY c.pos) OPERATOR(pg_catalog.||) '}')::pg_catalog.json
                  FROM pg_catalog.unnest(columns) WITH ORDINALITY AS c(col, pos));
    END IF;
    EXECUTE (SELECT 'SELECT ''{'' OPERATOR(pg_catalog.||) '
                    OPERATOR(pg_catalog.||) pg_catalog.string_agg(
                        pg_catalog.quote_literal(pg_catalog.to_json(c.col)::pg_catalog.text OPERATOR(pg_catalog.||) ':')
                        OPERATOR(pg_catalog.||) ' OPERATOR(pg_catalog.||) '
                        OPERATOR(pg_catalog.||) CASE WHEN a.attname IS NULL THEN '''null'''
                            ELSE pg_catalog.format('coalesce(pg_catalog.to_json(($1).%I)::pg_catalog.text, ''null'')',
                                                   c.col) END,
                        ' OPERATOR(pg_catalog.||) '','' OPERATOR(pg_catalog.||) ' ORDER BY c.pos)
                    OPERATOR(pg_catalog.||) ' OPERATOR(pg_catalog.||) ''}'''
               FROM pg_catalog.unnest(columns) WITH ORDINALITY AS c(col, pos)
               LEFT JOIN pg_catalog.pg_attribute a
                 ON a.attrelid OPERATOR(pg_catalog.=)
                        (SELECT t.typrelid FROM pg_catalog.pg_type t
                          WHERE t.oid OPERATOR(pg_catalog.=) pg_catalog.pg_typeof(row_value))
                AND a.attname OPERATOR(pg_catalog.=) c.col
                AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped)
      INTO picked USING row_value;
    RETURN picked::pg_catalog.json;
END
$skor$;

-- The event's payload, byte for byte the one the original skor's generated
-- functions produced, plus the opt-in fields. Shared by both trigger
-- functions and by backfill; its arguments are theirs (see skor.notify()),
-- `event_id` the event log id durable mode took for the event (flag `e`).
-- The opt-in fields follow `data` in one fixed order, the one wal mode
-- renders them in (src/source/wal/relations.rs): "old_key", "old",
-- "skor_seq", then the metadata: "event_id", "txid", "tx_time". "old" is
-- an UPDATE's only (never a READ's).
-- Neither this function nor skor.pick() has a SET search_path: they run only
-- inside the trigger functions, whose pinned search_path they inherit (a SET
-- costs a configuration save and restore per call, per row), every name in
-- them is schema-qualified, and no other role may call them.
-- `new_value` and `old_value` are the rows whose row_to_json are `new_row`
-- and `old_row` (see skor.pick()).
DROP FUNCTION IF EXISTS skor.payload(pg_catalog.text, pg_catalog.text, pg_catalog.text,
                                     pg_catalog.text[], pg_catalog.json, pg_catalog.json);
DROP FUNCTION IF EXISTS skor.payload(pg_catalog.text, pg_catalog.text, pg_catalog.text,
                                     pg_catalog.text[], pg_catalog.json, pg_catalog.json,
                                     pg_catalog.int8);
CREATE OR REPLACE FUNCTION skor.payload(
    op pg_catalog.text, table_schema pg_catalog.text, table_name pg_catalog.text,
    args pg_catalog.text[], new_row pg_catalog.json, old_row pg_catalog.json,
    event_id pg_catalog.int8, new_value anyelement, old_value anyelement
) RETURNS pg_catalog.text
LANGUAGE plpgsql AS $skor$
DECLARE
    -- `args` is TG_ARGV, whose subscripts start at 0 (another caller
    -- passes such an array: '[0:5]={skor,"",...}'::text[]).
    flags pg_catalog.text := args[1];
    key_count pg_catalog.int4 := args[4]::pg_catalog.int4;
    first_column pg_catalog.int4 := 5 OPERATOR(pg_catalog.+) key_count;
    columns pg_catalog.text[];
    data pg_catalog.json;
    payload pg_catalog.text;
BEGIN
    IF pg_catalog.array_upper(args, 1) OPERATOR(pg_catalog.>=) first_column THEN
        columns := args[first_column:];
    END IF;
    data := skor.pick(new_value, new_row, columns);
    payload := pg_catalog.json_build_object('table', table_name, 'schema', table_schema,
                                            'op', op, 'data', data)::pg_catalog.text;
    IF flags OPERATOR(pg_catalog.=) '' THEN
        RETURN payload;
    END IF;
    -- Extra fields go last, in json_build_object's own spacing.
    payload := pg_catalog."left"(payload, -1);
    IF pg_catalog.strpos(flags, 'k') OPERATOR(pg_catalog.>) 0 THEN
        payload := payload OPERATOR(pg_catalog.||) ', "old_key" : '
                   OPERATOR(pg_catalog.||) skor.pick(old_value, old_row, args[5:4 OPERATOR(pg_catalog.+) key_count])::pg_catalog.text;
    END IF;
    IF pg_catalog.strpos(flags, 'o') OPERATOR(pg_catalog.>) 0 AND op OPERATOR(pg_catalog.=) 'UPDATE' THEN
        payload := payload OPERATOR(pg_catalog.||) ', "old" : '
                   OPERATOR(pg_catalog.||) skor.pick(old_value, old_row, columns)::pg_catalog.text;
    END IF;
    IF pg_catalog.strpos(flags, 'u') OPERATOR(pg_catalog.>) 0 THEN
        payload := payload OPERATOR(pg_catalog.||) ', "skor_seq" : '
                   OPERATOR(pg_catalog.||) pg_catalog.nextval('skor.payload_seq'::pg_catalog.regclass)::pg_catalog.text;
    END IF;
    IF pg_catalog.strpos(flags, 'e') OPERATOR(pg_catalog.>) 0 THEN
        payload := payload OPERATOR(pg_catalog.||) ', "event_id" : '
                   OPERATOR(pg_catalog.||) coalesce(event_id::pg_catalog.text, 'null');
    END IF;
    -- The transaction's 32-bit xid, as wal mode's BEGIN message has it. A
    -- captured write has one already; a read (backfill) gets null rather
    -- than an xid assigned for it.
    IF pg_catalog.strpos(flags, 'x') OPERATOR(pg_catalog.>) 0 THEN
        payload := payload OPERATOR(pg_catalog.||) ', "txid" : '
                   OPERATOR(pg_catalog.||) coalesce(pg_catalog.xid(pg_catalog.pg_current_xact_id_if_assigned())::pg_catalog.text,
                                                    'null');
    END IF;
    -- The transaction's start (a trigger runs before the commit), RFC 3339
    -- in UTC with microseconds, as wal mode renders commit_time.
    IF pg_catalog.strpos(flags, 't') OPERATOR(pg_catalog.>) 0 THEN
        payload := payload OPERATOR(pg_catalog.||) ', "tx_time" : "'
                   OPERATOR(pg_catalog.||) pg_catalog.to_char(pg_catalog.now() AT TIME ZONE 'UTC',
                                                              'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
                   OPERATOR(pg_catalog.||) '"';
    END IF;
    RETURN payload OPERATOR(pg_catalog.||) '}';
END
$skor$;

-- Notify mode's trigger function. Arguments, shared with skor.capture():
--   1 the channel;
--   2 flags: `k` on the UPDATE trigger that fires when the row key changes
--     (the payload gains "old_key"), `o` for the old row on UPDATE, `u` for
--     unique payloads, `e`, `x`, `t` for the metadata event_id, txid and
--     tx_time (see skor.payload());
--   3, 4 the schema and name events carry: a partitioned table's own, so
--     its partitions' events name it; empty means the trigger's table;
--   5 the number k of key columns, 6.. the k key columns;
--   then the columns to publish (none means every column).
CREATE OR REPLACE FUNCTION skor.notify() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $skor$
DECLARE
    new_row pg_catalog.json;
    old_row pg_catalog.json;
    payload pg_catalog.text;
    token pg_catalog.text;
    ref pg_catalog.int8;
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        new_row := pg_catalog.row_to_json(OLD);
    ELSE
        new_row := pg_catalog.row_to_json(NEW);
        IF TG_ARGV[1] OPERATOR(pg_catalog.<>) ''
           AND (pg_catalog.strpos(TG_ARGV[1], 'k') OPERATOR(pg_catalog.>) 0
                OR pg_catalog.strpos(TG_ARGV[1], 'o') OPERATOR(pg_catalog.>) 0) THEN
            old_row := pg_catalog.row_to_json(OLD);
        END IF;
    END IF;
    -- The common case inline: no opt-in field, every column.
    IF TG_ARGV[1] OPERATOR(pg_catalog.=) ''
       AND TG_NARGS OPERATOR(pg_catalog.=) (5 OPERATOR(pg_catalog.+) TG_ARGV[4]::pg_catalog.int4) THEN
        payload := pg_catalog.json_build_object(
            'table', coalesce(NULLIF(TG_ARGV[3], ''), TG_TABLE_NAME),
            'schema', coalesce(NULLIF(TG_ARGV[2], ''), TG_TABLE_SCHEMA),
            'op', TG_OP, 'data', new_row)::pg_catalog.text;
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        payload := skor.payload(TG_OP,
                                coalesce(NULLIF(TG_ARGV[2], ''), TG_TABLE_SCHEMA),
                                coalesce(NULLIF(TG_ARGV[3], ''), TG_TABLE_NAME),
                                TG_ARGV, new_row, old_row, NULL, OLD, OLD);
    ELSE
        payload := skor.payload(TG_OP,
                                coalesce(NULLIF(TG_ARGV[2], ''), TG_TABLE_SCHEMA),
                                coalesce(NULLIF(TG_ARGV[3], ''), TG_TABLE_NAME),
                                TG_ARGV, new_row, old_row, NULL, NEW, OLD);
    END IF;
    IF pg_catalog.octet_length(payload) OPERATOR(pg_catalog.<) 8000 THEN
        PERFORM pg_catalog.pg_notify(TG_ARGV[0], payload);
    ELSE
        token := pg_catalog.gen_random_uuid()::pg_catalog.text;
        INSERT INTO skor.oversized_payload (channel, token, payload)
        VALUES (TG_ARGV[0], token, payload)
        RETURNING id INTO ref;
        PERFORM pg_catalog.pg_notify(TG_ARGV[0], pg_catalog.json_build_object(
            'skor_ref', ref, 'channel', TG_ARGV[0], 'token', token)::pg_catalog.text);
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
    state text NOT NULL DEFAULT 'pending',
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

-- What the daemon relies on when it reads a row, checked when it is
-- written: a state it knows, an op it knows, and a partition some daemon
-- claims (an event in no partition would never be delivered). One
-- constraint, not one per column: each captured row's INSERT prepares every
-- constraint of the table again, and the benchmark's durable burst paid for
-- each. Installs made before it lose their state-only check for it, and
-- those made before `skor backfill` their check without READ.
DO $skor$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_constraint
                    WHERE conrelid OPERATOR(pg_catalog.=) 'skor.event_log'::pg_catalog.regclass
                      AND conname OPERATOR(pg_catalog.=) 'event_log_valid'
                      AND pg_catalog.strpos(pg_catalog.pg_get_constraintdef(oid), 'READ')
                          OPERATOR(pg_catalog.>) 0) THEN
        ALTER TABLE skor.event_log DROP CONSTRAINT IF EXISTS event_log_state_check;
        ALTER TABLE skor.event_log DROP CONSTRAINT IF EXISTS event_log_valid;
        -- NOT VALID: the rows there were written by skor's triggers, under
        -- the check this replaces; scanning them would hold the log's
        -- exclusive lock, and with it every captured write, for the scan.
        ALTER TABLE skor.event_log ADD CONSTRAINT event_log_valid
            CHECK (state IN ('pending', 'dead', 'delivered')
                   AND op IN ('INSERT', 'UPDATE', 'DELETE', 'READ')
                   AND part BETWEEN 0 AND 63) NOT VALID;
    END IF;
END
$skor$;

-- Durable mode's trigger function; arguments as skor.notify()'s. The
-- payload is the one notify mode sends; the NOTIFY that follows carries
-- nothing and only wakes the daemon up.
CREATE OR REPLACE FUNCTION skor.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $skor$
DECLARE
    new_row pg_catalog.json;
    old_row pg_catalog.json;
    key_count pg_catalog.int4 := TG_ARGV[4]::pg_catalog.int4;
    table_schema pg_catalog.text := coalesce(NULLIF(TG_ARGV[2], ''), TG_TABLE_SCHEMA);
    table_name pg_catalog.text := coalesce(NULLIF(TG_ARGV[3], ''), TG_TABLE_NAME);
    row_key pg_catalog.text;
    payload pg_catalog.text;
    event_id pg_catalog.int8;
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        new_row := pg_catalog.row_to_json(OLD);
    ELSE
        new_row := pg_catalog.row_to_json(NEW);
        IF TG_ARGV[1] OPERATOR(pg_catalog.<>) ''
           AND (pg_catalog.strpos(TG_ARGV[1], 'k') OPERATOR(pg_catalog.>) 0
                OR pg_catalog.strpos(TG_ARGV[1], 'o') OPERATOR(pg_catalog.>) 0) THEN
            old_row := pg_catalog.row_to_json(OLD);
        END IF;
    END IF;
    IF key_count OPERATOR(pg_catalog.=) 0 THEN
        NULL;
    ELSIF key_count OPERATOR(pg_catalog.=) 1
          AND pg_catalog.strpos(new_row::pg_catalog.text, '\u') OPERATOR(pg_catalog.=) 0 THEN
        -- skor.pick()'s own reading of one column, without its call and
        -- its query: the common key, and most of a captured row's cost.
        row_key := '{' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_ARGV[5])::pg_catalog.text
                   OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||)
                   coalesce(new_row OPERATOR(pg_catalog.->) TG_ARGV[5], 'null'::pg_catalog.json)::pg_catalog.text
                   OPERATOR(pg_catalog.||) '}';
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        row_key := skor.pick(OLD, new_row, TG_ARGV[5:4 OPERATOR(pg_catalog.+) key_count])::pg_catalog.text;
    ELSE
        row_key := skor.pick(NEW, new_row, TG_ARGV[5:4 OPERATOR(pg_catalog.+) key_count])::pg_catalog.text;
    END IF;
    -- The common case inline: no opt-in field, every column.
    IF TG_ARGV[1] OPERATOR(pg_catalog.=) ''
       AND TG_NARGS OPERATOR(pg_catalog.=) (5 OPERATOR(pg_catalog.+) key_count) THEN
        payload := pg_catalog.json_build_object('table', table_name, 'schema', table_schema,
                                                'op', TG_OP, 'data', new_row)::pg_catalog.text;
    ELSE
        -- The payload names its own event: take the id the row gets.
        IF pg_catalog.strpos(TG_ARGV[1], 'e') OPERATOR(pg_catalog.>) 0 THEN
            event_id := pg_catalog.nextval('skor.event_log_id_seq'::pg_catalog.regclass);
        END IF;
        IF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
            payload := skor.payload(TG_OP, table_schema, table_name, TG_ARGV, new_row, old_row,
                                    event_id, OLD, OLD);
        ELSE
            payload := skor.payload(TG_OP, table_schema, table_name, TG_ARGV, new_row, old_row,
                                    event_id, NEW, OLD);
        END IF;
    END IF;
    IF event_id IS NULL THEN
        INSERT INTO skor.event_log (channel, schema_name, table_name, op, row_key, part, payload)
        VALUES (TG_ARGV[0], table_schema, table_name, TG_OP, row_key,
                pg_catalog.hashtext(coalesce(row_key, table_schema OPERATOR(pg_catalog.||) '.'
                                                      OPERATOR(pg_catalog.||) table_name))
                    OPERATOR(pg_catalog.&) 63,
                payload);
    ELSE
        INSERT INTO skor.event_log (id, channel, schema_name, table_name, op, row_key, part, payload)
        VALUES (event_id, TG_ARGV[0], table_schema, table_name, TG_OP, row_key,
                pg_catalog.hashtext(coalesce(row_key, table_schema OPERATOR(pg_catalog.||) '.'
                                                      OPERATOR(pg_catalog.||) table_name))
                    OPERATOR(pg_catalog.&) 63,
                payload);
    END IF;
    PERFORM pg_catalog.pg_notify('skor_event_log', '');
    RETURN NULL;
END
$skor$;

-- Durable mode's statement-level trigger function, for INSERT and DELETE
-- on a plain table without a `when`: the rows of one statement arrive as
-- the transition table `skor_rows` and go into the event log in one INSERT,
-- in the statement's row order, followed by one NOTIFY. A row trigger pays
-- an executor start-up per row (the event log's indexes and CHECK prepared
-- again each time); this pays it once per statement. Arguments, payloads,
-- keys and partitions are skor.capture()'s, row for row. UPDATE keeps the
-- row trigger: its key-change split needs each row's old and new version
-- side by side, which a transition table does not pair.
--
-- A transition table's rows are of type record, which skor.pick()'s
-- fallback for rows holding `\u` escapes cannot read columns from; those
-- rare rows go through skor.typed_key() and skor.typed_payload(), which
-- read them back as the table's own row type.
CREATE OR REPLACE FUNCTION skor.capture_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $skor$
DECLARE
    key_count pg_catalog.int4 := TG_ARGV[4]::pg_catalog.int4;
    key_columns pg_catalog.text[] := TG_ARGV[5:4 OPERATOR(pg_catalog.+) key_count];
    key_head pg_catalog.text := '{' OPERATOR(pg_catalog.||) pg_catalog.to_json(TG_ARGV[5])::pg_catalog.text
                                OPERATOR(pg_catalog.||) ':';
    table_schema pg_catalog.text := coalesce(NULLIF(TG_ARGV[2], ''), TG_TABLE_SCHEMA);
    table_name pg_catalog.text := coalesce(NULLIF(TG_ARGV[3], ''), TG_TABLE_NAME);
    plain pg_catalog.bool := TG_ARGV[1] OPERATOR(pg_catalog.=) ''
                             AND TG_NARGS OPERATOR(pg_catalog.=) (5 OPERATOR(pg_catalog.+) key_count);
    logged pg_catalog.int8;
BEGIN
    INSERT INTO skor.event_log (id, channel, schema_name, table_name, op, row_key, part, payload)
    SELECT k.id, TG_ARGV[0], table_schema, table_name, TG_OP, k.row_key,
           pg_catalog.hashtext(coalesce(k.row_key, table_schema OPERATOR(pg_catalog.||) '.'
                                                   OPERATOR(pg_catalog.||) table_name))
               OPERATOR(pg_catalog.&) 63,
           CASE WHEN plain THEN
                    pg_catalog.json_build_object('table', table_name, 'schema', table_schema,
                                                 'op', TG_OP, 'data', k.row_json)::pg_catalog.text
                WHEN NOT k.escaped THEN
                    skor.payload(TG_OP, table_schema, table_name, TG_ARGV, k.row_json, NULL,
                                 k.id, k.row_value, k.row_value)
                ELSE skor.typed_payload(TG_RELID, k.row_value::pg_catalog.text, TG_OP, table_schema,
                                        table_name, TG_ARGV, k.row_json, k.id) END
      FROM (SELECT pg_catalog.nextval('skor.event_log_id_seq'::pg_catalog.regclass) AS id,
                   r.row_value, r.row_json, r.escaped,
                   CASE WHEN key_count OPERATOR(pg_catalog.=) 0 THEN NULL
                        WHEN r.escaped THEN
                             skor.typed_key(TG_RELID, r.row_value::pg_catalog.text, r.row_json, key_columns)
                        WHEN key_count OPERATOR(pg_catalog.=) 1 THEN
                             key_head OPERATOR(pg_catalog.||)
                             coalesce(r.row_json OPERATOR(pg_catalog.->) TG_ARGV[5],
                                      'null'::pg_catalog.json)::pg_catalog.text
                             OPERATOR(pg_catalog.||) '}'
                        ELSE skor.pick(r.row_value, r.row_json, key_columns)::pg_catalog.text
                   END AS row_key
              FROM (SELECT j.row_value, j.row_json,
                           pg_catalog.strpos(j.row_json::pg_catalog.text, '\u') OPERATOR(pg_catalog.>) 0
                               AS escaped
                      FROM (SELECT s AS row_value, pg_catalog.row_to_json(s) AS row_json
                              FROM skor_rows s) j) r) k;
    GET DIAGNOSTICS logged = ROW_COUNT;
    IF logged OPERATOR(pg_catalog.>) 0 THEN
        PERFORM pg_catalog.pg_notify('skor_event_log', '');
    END IF;
    RETURN NULL;
END
$skor$;

-- skor.pick() and skor.payload() of a transition table's row, given as the
-- text of the record: read back as `tbl`'s row type, whose columns the
-- fallback of skor.pick() can name. Every row type's text reads back as
-- itself. No SET search_path, as skor.pick()'s.
CREATE OR REPLACE FUNCTION skor.typed_key(tbl pg_catalog.regclass, row_text pg_catalog.text,
                                          row_json pg_catalog.json, columns pg_catalog.text[])
RETURNS pg_catalog.text
LANGUAGE plpgsql AS $skor$
DECLARE
    picked pg_catalog.text;
BEGIN
    EXECUTE pg_catalog.format('SELECT skor.pick($1::%s, $2, $3)::pg_catalog.text', tbl)
       INTO picked USING row_text, row_json, columns;
    RETURN picked;
END
$skor$;

CREATE OR REPLACE FUNCTION skor.typed_payload(
    tbl pg_catalog.regclass, row_text pg_catalog.text, op pg_catalog.text,
    table_schema pg_catalog.text, table_name pg_catalog.text, args pg_catalog.text[],
    row_json pg_catalog.json, event_id pg_catalog.int8
) RETURNS pg_catalog.text
LANGUAGE plpgsql AS $skor$
DECLARE
    payload pg_catalog.text;
BEGIN
    EXECUTE pg_catalog.format('SELECT skor.payload($1, $2, $3, $4, $5, NULL, $6, $7::%1$s, $7::%1$s)', tbl)
       INTO payload USING op, table_schema, table_name, args, row_json, event_id, row_text;
    RETURN payload;
END
$skor$;

-- Creates the trigger `name` calling `func` (skor.notify or skor.capture)
-- for `op` on `tbl`. `key_columns` NULL means the table's primary key,
-- looked up now; a table without one is ordered as a whole. `flags` are
-- the payload's (see skor.notify()) besides `u`, which `unique_payloads`
-- sets. An UPDATE trigger of a keyed table
-- comes in two: one for updates that keep the key, one (`<name>_key`,
-- whose payload names the old key) for updates that change it; their WHEN
-- clauses cost one comparison per row. `condition`, the table's `when`
-- for `op` (NULL: none), joins that WHEN clause. It is compiled here,
-- under this function's pinned search_path: it calls pg_catalog's
-- functions and operators, or ones it names with their schema, never
-- whatever another role put in `public`.
DROP FUNCTION IF EXISTS skor.create_trigger(pg_catalog.regclass, pg_catalog.text, pg_catalog.text,
    pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.text[], pg_catalog.bool);
CREATE OR REPLACE FUNCTION skor.create_trigger(
    tbl pg_catalog.regclass, name pg_catalog.text, op pg_catalog.text, func pg_catalog.text,
    channel pg_catalog.text, key_columns pg_catalog.text[], columns pg_catalog.text[],
    unique_payloads pg_catalog.bool,
    extra_flags pg_catalog.text DEFAULT '', condition pg_catalog.text DEFAULT NULL
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $skor$
DECLARE
    flags pg_catalog.text := CASE WHEN unique_payloads THEN 'u' ELSE '' END
                             OPERATOR(pg_catalog.||) coalesce(extra_flags, '');
    root_schema pg_catalog.text := '';
    root_name pg_catalog.text := '';
    old_key pg_catalog.text;
    new_key pg_catalog.text;
    user_condition pg_catalog.text := '';
BEGIN
    IF key_columns IS NULL THEN
        SELECT coalesce(pg_catalog.array_agg(a.attname::pg_catalog.text ORDER BY k.ord), '{}')
          INTO key_columns
          FROM pg_catalog.pg_index i
         CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a
            ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid AND a.attnum OPERATOR(pg_catalog.=) k.attnum
         WHERE i.indrelid OPERATOR(pg_catalog.=) tbl AND i.indisprimary;
    END IF;
    IF condition IS NOT NULL THEN
        -- On a line of its own: a trailing `-- comment` ends with it.
        condition := condition OPERATOR(pg_catalog.||) E'\n';
        user_condition := ' AND (' OPERATOR(pg_catalog.||) condition OPERATOR(pg_catalog.||) ')';
    END IF;
    -- A partitioned table's trigger is cloned onto its partitions; their
    -- events carry the partitioned table's name, as logical replication's
    -- publish_via_partition_root does.
    SELECT n.nspname, c.relname INTO root_schema, root_name
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
     WHERE c.oid OPERATOR(pg_catalog.=) tbl AND c.relkind OPERATOR(pg_catalog.=) 'p';
    root_schema := coalesce(root_schema, '');
    root_name := coalesce(root_name, '');
    IF op OPERATOR(pg_catalog.=) 'UPDATE'
       AND pg_catalog.cardinality(key_columns) OPERATOR(pg_catalog.>) 0 THEN
        SELECT pg_catalog.string_agg('OLD.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c), ', '),
               pg_catalog.string_agg('NEW.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c), ', ')
          INTO old_key, new_key
          FROM pg_catalog.unnest(key_columns) AS c;
        PERFORM skor.execute_create_trigger(tbl, name, op, func,
            pg_catalog.format('(ROW(%s) IS NOT DISTINCT FROM ROW(%s))%s', old_key, new_key, user_condition),
            ARRAY[channel, flags, root_schema, root_name,
                  pg_catalog.cardinality(key_columns)::pg_catalog.text]
                OPERATOR(pg_catalog.||) key_columns OPERATOR(pg_catalog.||) columns);
        PERFORM skor.execute_create_trigger(tbl, name OPERATOR(pg_catalog.||) '_key', op, func,
            pg_catalog.format('(ROW(%s) IS DISTINCT FROM ROW(%s))%s', old_key, new_key, user_condition),
            ARRAY[channel, flags OPERATOR(pg_catalog.||) 'k', root_schema, root_name,
                  pg_catalog.cardinality(key_columns)::pg_catalog.text]
                OPERATOR(pg_catalog.||) key_columns OPERATOR(pg_catalog.||) columns);
    ELSE
        -- Durable INSERT and DELETE log a statement's rows at once (see
        -- skor.capture_rows()), except where a statement trigger would not
        -- see every row: a `when` is a row condition, and the rows of a
        -- partitioned table, a partition, an inheritance parent or child
        -- also change through statements on another table, which fire
        -- that table's statement triggers, not this one's.
        IF func OPERATOR(pg_catalog.=) 'capture' AND condition IS NULL
           AND op OPERATOR(pg_catalog.<>) 'UPDATE'
           AND EXISTS (SELECT FROM pg_catalog.pg_class c
                        WHERE c.oid OPERATOR(pg_catalog.=) tbl
                          AND c.relkind OPERATOR(pg_catalog.=) 'r'
                          AND NOT c.relispartition AND NOT c.relhassubclass)
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_inherits i
                            WHERE i.inhrelid OPERATOR(pg_catalog.=) tbl) THEN
            func := 'capture_rows';
        END IF;
        PERFORM skor.execute_create_trigger(tbl, name, op, func, condition,
            ARRAY[channel, flags, root_schema, root_name,
                  pg_catalog.cardinality(key_columns)::pg_catalog.text]
                OPERATOR(pg_catalog.||) key_columns OPERATOR(pg_catalog.||) columns);
    END IF;
END
$skor$;

-- One CREATE TRIGGER, every identifier and argument quoted.
CREATE OR REPLACE FUNCTION skor.execute_create_trigger(
    tbl pg_catalog.regclass, name pg_catalog.text, op pg_catalog.text, func pg_catalog.text,
    condition pg_catalog.text, args pg_catalog.text[]
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $skor$
BEGIN
    IF func OPERATOR(pg_catalog.<>) ALL (ARRAY['notify', 'capture', 'capture_rows'])
       OR op OPERATOR(pg_catalog.<>) ALL (ARRAY['INSERT', 'UPDATE', 'DELETE'])
       OR (func OPERATOR(pg_catalog.=) 'capture_rows'
           AND (op OPERATOR(pg_catalog.=) 'UPDATE' OR condition IS NOT NULL)) THEN
        RAISE EXCEPTION 'skor: cannot create a trigger calling % for %', func, op;
    END IF;
    EXECUTE pg_catalog.format('CREATE TRIGGER %I AFTER %s ON %s %s %s EXECUTE FUNCTION skor.%I(%s)',
        name, op, tbl,
        CASE WHEN func OPERATOR(pg_catalog.<>) 'capture_rows' THEN 'FOR EACH ROW'
             WHEN op OPERATOR(pg_catalog.=) 'INSERT' THEN 'REFERENCING NEW TABLE AS skor_rows FOR EACH STATEMENT'
             ELSE 'REFERENCING OLD TABLE AS skor_rows FOR EACH STATEMENT' END,
        CASE WHEN condition IS NULL THEN '' ELSE 'WHEN (' OPERATOR(pg_catalog.||) condition OPERATOR(pg_catalog.||) ')' END,
        func,
        (SELECT pg_catalog.string_agg(pg_catalog.quote_literal(a), ', ' ORDER BY o)
           FROM pg_catalog.unnest(args) WITH ORDINALITY AS x(a, o)));
END
$skor$;

-- The objects outside skor's schema that skor created (wal mode's
-- publication and replication slot): install adopts no object of that name
-- it did not make, since whoever made it could change what skor captures.
-- `state` is the publication as install left it and `config` the config it
-- was made from, so the daemon and `skor check --connect` notice when
-- either drifts.
CREATE TABLE IF NOT EXISTS skor.created_object (
    kind text NOT NULL CHECK (kind IN ('publication', 'slot')),
    name text NOT NULL,
    state text NOT NULL DEFAULT '',
    config text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, name)
);

-- Objects of earlier versions.
DROP FUNCTION IF EXISTS skor.create_capture_trigger(regclass, text, text, text, text[], text[]);
