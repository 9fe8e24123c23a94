//! The `columns` key of a `[[table]]`: `"*"`, a list, or a list per operation.

use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use skor_sink_api::Op;

/// Which columns a table publishes in `data`, per operation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Columns {
    /// Columns for INSERT; `None` means every column.
    pub insert: Option<Vec<String>>,
    /// Columns for UPDATE; `None` means every column.
    pub update: Option<Vec<String>>,
    /// Columns for DELETE; `None` means every column.
    pub delete: Option<Vec<String>>,
}

impl Columns {
    /// The columns published for `op`; `None` means every column.
    pub fn for_op(&self, op: Op) -> Option<&[String]> {
        match op {
            // A backfilled row is published as its INSERT would be.
            Op::Insert | Op::Read => self.insert.as_deref(),
            Op::Update => self.update.as_deref(),
            Op::Delete => self.delete.as_deref(),
        }
    }

    fn same_for_all(list: Option<Vec<String>>) -> Self {
        Self {
            insert: list.clone(),
            update: list.clone(),
            delete: list,
        }
    }
}

/// `"*"` or a list of column names.
struct ColumnList(Option<Vec<String>>);

const EXPECTED: &str = "\"*\", a list of column names, or a table with insert/update/delete";

impl<'de> serde::Deserialize<'de> for ColumnList {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = ColumnList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"*\" or a list of column names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ColumnList, E> {
                star(v).map(|()| ColumnList(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<ColumnList, A::Error> {
                list(seq).map(|l| ColumnList(Some(l)))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

fn star<E: de::Error>(v: &str) -> Result<(), E> {
    if v == "*" {
        Ok(())
    } else {
        Err(E::invalid_value(de::Unexpected::Str(v), &EXPECTED))
    }
}

fn list<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Vec<String>, A::Error> {
    let mut names = Vec::new();
    while let Some(name) = seq.next_element::<String>()? {
        names.push(name);
    }
    if names.is_empty() {
        return Err(de::Error::custom(
            "the column list is empty; use \"*\" for every column",
        ));
    }
    Ok(names)
}

impl<'de> serde::Deserialize<'de> for Columns {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ColumnsVisitor;
        impl<'de> Visitor<'de> for ColumnsVisitor {
            type Value = Columns;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Columns, E> {
                star(v).map(|()| Columns::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Columns, A::Error> {
                list(seq).map(|l| Columns::same_for_all(Some(l)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Columns, A::Error> {
                let mut columns = Columns::default();
                while let Some(key) = map.next_key::<String>()? {
                    let slot = match key.as_str() {
                        "insert" => &mut columns.insert,
                        "update" => &mut columns.update,
                        "delete" => &mut columns.delete,
                        other => {
                            return Err(de::Error::unknown_field(
                                other,
                                &["insert", "update", "delete"],
                            ))
                        }
                    };
                    *slot = map.next_value::<ColumnList>()?.0;
                }
                Ok(columns)
            }
        }
        deserializer.deserialize_any(ColumnsVisitor)
    }
}
