-- skor: drops every trigger that calls skor.notify() or skor.capture(). Install runs it before
-- creating the configured triggers, so a table or operation removed from the
-- config loses its trigger; uninstall runs it first.

DO $skor$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgname, c.relname, n.nspname
          FROM pg_trigger tg
          JOIN pg_class c ON c.oid = tg.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE tg.tgfoid IN (to_regprocedure('skor.notify()'), to_regprocedure('skor.capture()'))
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %I.%I', t.tgname, t.nspname, t.relname);
    END LOOP;
END
$skor$;
