//! A table with a column of every common type and rows of awkward values,
//! shared by the WAL tests: rendering from text output, and end to end.

/// The table the statements below create and fill.
pub const TABLE: &str = "wal_types";

/// Creates the enum, the domains and [`TABLE`].
pub const SCHEMA_SQL: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy "quoted"');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE DOMAIN doc AS jsonb;
CREATE TABLE wal_types (
    id integer PRIMARY KEY,
    c_smallint smallint,
    c_integer integer,
    c_bigint bigint,
    c_numeric numeric,
    c_real real,
    c_double double precision,
    c_bool boolean,
    c_text text,
    c_varchar varchar(40),
    c_char char(5),
    c_json json,
    c_jsonb jsonb,
    c_uuid uuid,
    c_date date,
    c_timestamp timestamp,
    c_timestamptz timestamptz,
    c_bytea bytea,
    c_interval interval,
    c_time time,
    c_oid oid,
    c_inet inet,
    c_mood mood,
    c_posint posint,
    c_doc doc,
    c_int_array integer[],
    c_text_array text[],
    c_numeric_array numeric[],
    c_bool_array boolean[],
    c_date_array date[],
    c_timestamp_array timestamp[],
    c_timestamptz_array timestamptz[],
    c_jsonb_array jsonb[],
    c_int_matrix integer[][],
    c_posint_array posint[],
    c_mood_array mood[],
    c_box_array box[]
);
"#;

/// Fills [`TABLE`]: ordinary values, edge values, more edge values, and a
/// row of NULLs. Timestamps near 1900 have offsets with seconds in zones
/// that were on local mean time then (`Europe/Amsterdam`,
/// `America/St_Johns`).
pub const ROWS_SQL: &str = r#"
INSERT INTO wal_types VALUES (
    1, 1, 2, 3, 4.5, 1.5, 2.25, true, 'plain', 'varchar', 'ab',
    '{"a": 1}', '{"b": [1, 2]}', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '2024-01-02', '2024-01-02 03:04:05.123456', '2024-01-02 03:04:05.123456+05:30',
    '\x0001ff', '1 day 02:03:04', '03:04:05', 42, '192.168.0.1/24', 'ok', 7,
    '{"k": "v"}', '{1,2,3}', '{a,b}', '{1.5,2}', '{t,f}', '{2024-01-02}',
    '{"2024-01-02 03:04:05"}', '{"2024-01-02 03:04:05+00"}', '{"{\"a\": 1}"}',
    '{{1,2},{3,4}}', '{1,2}', '{sad,ok}', '{(1,1),(0,0);(3,3),(2,2)}'
);
INSERT INTO wal_types VALUES (
    2, -32768, -2147483648, 9223372036854775807, 'NaN', 'NaN', 'Infinity', false,
    E'quote " backslash \\ newline \n tab \t cr \r ff \f bs \b ctl \x01 \x1f del \x7f é 日本 😀 /',
    E'a\\"b', 'x', E'{ "a" :  [1, 2 ,3],\n "b":"x\\ny", "a": null }',
    '{"z": {"y": [true, null, 1.50]}, "a": "\u00e9"}', '00000000-0000-0000-0000-000000000000',
    'infinity', '-infinity', 'infinity', '', '-1 years -2 mons +3 days -04:05:06.7', '24:00:00',
    4294967295, '::1', 'happy "quoted"', 2147483647, '[]',
    '[0:1]={1,2}', E'{NULL,"NULL","null","a,b","{x}","q\\"uote","back\\\\slash",""," sp ","é"}',
    '{NaN,-1.5,123456789012345678901234567890.000000000001}', '{NULL,t}',
    '{infinity,-infinity,0044-03-15 BC}', '{"0044-03-15 12:00:00 BC",infinity}',
    '{"1899-06-01 12:00:00+00","2024-06-01 12:00:00.5+00",NULL}', '{null,"\"s\"",1,"[1, {}]"}',
    '[0:1][1:2]={{1,2},{3,NULL}}', '{}', '{"happy \"quoted\"",NULL}', '{}'
);
INSERT INTO wal_types VALUES (
    3, 0, 0, -9223372036854775808,
    '-0.000000000000000000000000000000000000000000000000000000012345678901234567890',
    '-Infinity', '1e-300', NULL, '', '', '', '[]', 'null', NULL,
    '0044-03-15 BC', '0044-03-15 12:00:00 BC', '1899-06-01 12:00:00+00', NULL, '0',
    NULL, 0, NULL, 'sad', 1, '"str"',
    '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}', '{}'
);
INSERT INTO wal_types VALUES (
    4, NULL, NULL, 1e18, 1e100, 3.4e38, -1.7976931348623157e308, NULL, NULL, NULL,
    NULL, NULL, NULL, NULL, '10000-01-01', '12345-06-07 08:09:10', '-infinity'
);
INSERT INTO wal_types (id) VALUES (5);
"#;
