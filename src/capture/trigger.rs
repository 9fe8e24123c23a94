//! What the trigger modes (notify, durable) share: the flags a trigger
//! passes to `skor.notify()` / `skor.capture()` in sql/install.sql.

use skor_sink_api::Op;

use crate::config::TableConfig;

/// The payload flags of `table`'s `op` trigger besides `u` (see
/// `skor.notify()` in sql/install.sql): `o` for the old row on UPDATE, one
/// letter per metadata field.
pub fn trigger_flags(table: &TableConfig, op: Op) -> String {
    let mut flags = String::new();
    if table.old && op == Op::Update {
        flags.push('o');
    }
    let mut fields = table.metadata.clone();
    fields.sort();
    flags.extend(fields.iter().filter_map(|f| f.flag()));
    flags
}
