-- skor: durable mode's partition leases. Idempotent; appended to the
-- install script after install.sql. Only skor's owner (the installing role)
-- reads or writes these tables: unlike a bare advisory lock, which any role
-- that can connect may take, a lease cannot be held or stolen from outside.

-- One row per live daemon session: a random id made at connect, renewed
-- with its leases. Daemons whose row has expired no longer count when the
-- partitions are shared out.
CREATE TABLE IF NOT EXISTS skor.daemon (
    id uuid PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- For people reading the table: where the session runs.
    backend_pid integer,
    application_name text
);
CREATE INDEX IF NOT EXISTS daemon_expires ON skor.daemon (expires_at);

-- One row per key partition (0..63). A daemon session delivers a
-- partition's events only while it holds its lease; another session takes
-- it over only once it is released (holder NULL) or expired by the
-- database's clock.
CREATE TABLE IF NOT EXISTS skor.partition_lease (
    part smallint PRIMARY KEY CHECK (part BETWEEN 0 AND 63),
    holder uuid,
    expires_at timestamptz NOT NULL DEFAULT '-infinity',
    taken_at timestamptz
);
INSERT INTO skor.partition_lease (part)
SELECT g::smallint FROM pg_catalog.generate_series(0, 63) AS g
ON CONFLICT (part) DO NOTHING;

-- Nobody but the owner. A daemon running as another role needs
-- SELECT, INSERT, UPDATE, DELETE ON skor.daemon and SELECT, UPDATE ON
-- skor.partition_lease, granted to that role by name.
REVOKE ALL ON skor.daemon FROM PUBLIC;
REVOKE ALL ON skor.partition_lease FROM PUBLIC;
