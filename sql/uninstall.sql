-- skor: removes every object `skor install` created, and nothing else.
-- Payloads still waiting in skor.oversized_payload are dropped with it.

SELECT pg_advisory_xact_lock(hashtext('skor install'));

DO $skor$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgname, c.relname, n.nspname
          FROM pg_trigger tg
          JOIN pg_class c ON c.oid = tg.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE tg.tgfoid = to_regprocedure('skor.notify()')
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %I.%I', t.tgname, t.nspname, t.relname);
    END LOOP;
END
$skor$;

DROP FUNCTION IF EXISTS skor.notify();
DROP TABLE IF EXISTS skor.oversized_payload;

-- The schema goes too, unless somebody put objects of their own in it.
DO $skor$
BEGIN
    DROP SCHEMA IF EXISTS skor;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'schema skor kept: it holds objects skor did not create';
END
$skor$;
