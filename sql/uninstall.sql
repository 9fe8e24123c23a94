-- skor: removes every object `skor install` created, and nothing else.
-- Runs after drop_triggers.sql, in one transaction under skor's install lock.
-- Payloads still waiting in skor.oversized_payload are dropped with it;
-- `skor uninstall` refuses to drop undelivered durable events unless told to.

DROP FUNCTION IF EXISTS skor.notify();
DROP FUNCTION IF EXISTS skor.capture();
DROP FUNCTION IF EXISTS skor.capture_rows();
DROP FUNCTION IF EXISTS skor.typed_key(regclass, text, json, text[]);
DROP FUNCTION IF EXISTS skor.typed_payload(regclass, text, text, text, text, text[], json, int8);
DROP FUNCTION IF EXISTS skor.create_capture_trigger(regclass, text, text, text, text[], text[]);
DROP FUNCTION IF EXISTS skor.create_trigger(regclass, text, text, text, text, text[], text[], bool);
DROP FUNCTION IF EXISTS skor.create_trigger(regclass, text, text, text, text, text[], text[], bool, text, text);
DROP FUNCTION IF EXISTS skor.execute_create_trigger(regclass, text, text, text, text, text[]);
DROP FUNCTION IF EXISTS skor.payload(text, text, text, text[], json, json);
DROP FUNCTION IF EXISTS skor.payload(text, text, text, text[], json, json, int8);
DROP FUNCTION IF EXISTS skor.payload(text, text, text, text[], json, json, int8, anyelement, anyelement);
DROP FUNCTION IF EXISTS skor.pick(json, text[]);
DROP FUNCTION IF EXISTS skor.pick(anyelement, json, text[]);
DROP TABLE IF EXISTS skor.oversized_payload;
DROP TABLE IF EXISTS skor.event_log;
DROP SEQUENCE IF EXISTS skor.payload_seq;
DROP TABLE IF EXISTS skor.partition_lease;
DROP TABLE IF EXISTS skor.daemon;
DROP FUNCTION IF EXISTS skor.notify_payload(text, text);
DROP TABLE IF EXISTS skor.backfill;
DROP TABLE IF EXISTS skor.wal_backfill;
DROP TABLE IF EXISTS skor.created_object;

-- The schema goes too, unless somebody put objects of their own in it.
DO $skor$
BEGIN
    DROP SCHEMA IF EXISTS skor;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'schema skor kept: it holds objects skor did not create';
END
$skor$;
