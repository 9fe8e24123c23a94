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

-- The trigger function. Arguments: the NOTIFY channel, then the columns to
-- publish (none means every column). The payload is byte for byte the one
-- the original skor's generated functions produced.
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
        -- Built as text from row_to_json's own output so the keys keep the
        -- configured order and the compact formatting of row_to_json; a
        -- column dropped since install yields null instead of an error in
        -- the user's transaction.
        SELECT ('{' || string_agg(to_json(c.col)::text || ':'
                      || coalesce(row_json -> c.col, 'null'::json)::text,
                      ',' ORDER BY c.pos) || '}')::json
          INTO data
          FROM unnest(TG_ARGV[1:TG_NARGS - 1]) WITH ORDINALITY AS c(col, pos);
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
