-- skor: drops every trigger that calls skor.notify(), skor.capture() or
-- skor.capture_rows(). Install runs it before
-- creating the configured triggers, so a table or operation removed from the
-- config loses its trigger; uninstall runs it first. A partition's clone of
-- its partitioned table's trigger goes with the original, and cannot be
-- dropped on its own.

DO $skor$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgname, c.relname, n.nspname
          FROM pg_catalog.pg_trigger tg
          JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) tg.tgrelid
          JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
         WHERE tg.tgfoid IN (pg_catalog.to_regprocedure('skor.notify()'),
                             pg_catalog.to_regprocedure('skor.capture()'),
                             pg_catalog.to_regprocedure('skor.capture_rows()'))
           AND tg.tgparentid OPERATOR(pg_catalog.=) 0
    LOOP
        EXECUTE pg_catalog.format('DROP TRIGGER %I ON %I.%I', t.tgname, t.nspname, t.relname);
    END LOOP;
END
$skor$;
