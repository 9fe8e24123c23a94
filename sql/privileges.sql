-- skor: runs last in `skor install`. No role but skor's owner (and
-- superusers) may read, write or call anything in the schema: writers of
-- captured tables need nothing, since the triggers run as the owner, and
-- the daemon's role gets what it needs by the GRANTs in README's "Security
-- model". Installs of earlier versions granted INSERT to PUBLIC; this takes
-- it back.
REVOKE ALL ON SCHEMA skor FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA skor FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA skor FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA skor FROM PUBLIC;
