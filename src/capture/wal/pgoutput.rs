//! A decoder of the pgoutput logical replication messages (protocol version
//! 1) that carry row changes: Relation, Insert, Update, Delete, Truncate.
//!
//! The streaming crate parses Begin, Commit and logical Message itself and
//! hands every other message over as raw bytes; [`decode`] turns those into a
//! [`Change`]. Message formats:
//! <https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html>.
//!
//! Malformed input is an error, never a panic: the bytes come off the
//! network, and a server speaking a newer protocol version (which prefixes
//! changes with a transaction id when streaming) must be told apart from a
//! bug rather than misread, so a message must also be consumed exactly.

use bytes::Bytes;
use skor_sink_api::Op;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// 'R': the shape of a table, sent before its first change in a session
    /// and again whenever it changes.
    Relation(Relation),
    /// 'I': a new row.
    Insert {
        /// The table's [`Relation::id`].
        relation: u32,
        /// The row as inserted.
        new: Tuple,
    },
    /// 'U': a changed row.
    Update {
        /// The table's [`Relation::id`].
        relation: u32,
        /// The old row: only when the replica identity changed ('K') or the
        /// table has REPLICA IDENTITY FULL ('O').
        old: Option<OldTuple>,
        /// The row after the update; unchanged TOASTed columns are
        /// [`Value::UnchangedToast`].
        new: Tuple,
    },
    /// 'D': a deleted row.
    Delete {
        /// The table's [`Relation::id`].
        relation: u32,
        /// What the replica identity lets the server say about the row.
        old: OldTuple,
    },
    /// 'T': tables emptied by one TRUNCATE.
    Truncate {
        /// The [`Relation::id`]s of the tables truncated.
        relations: Vec<u32>,
    },
    /// Type, Origin, Begin, Commit, Message and anything unknown: the tag
    Ignored(u8),
}

/// A row change as the renderer takes it: the relation, the op, the row
/// `data` shows (a DELETE's old row), and the old row when sent.
pub type RowChange = (u32, Op, Tuple, Option<OldTuple>);

impl Change {
    /// The row change this is; any other message back as it was.
    pub fn into_row(self) -> Result<RowChange, Change> {
        match self {
            Change::Insert { relation, new } => Ok((relation, Op::Insert, new, None)),
            Change::Update { relation, old, new } => Ok((relation, Op::Update, new, old)),
            Change::Delete { relation, old } => {
                let row = match &old {
                    OldTuple::Key(row) | OldTuple::Full(row) => Tuple(row.0.clone()),
                };
                Ok((relation, Op::Delete, row, Some(old)))
            }
            other => Err(other),
        }
    }
}

/// The old row of an Update or Delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// 'K': the replica identity columns only (others Null)
    Key(Tuple),
    /// 'O': the whole old row (REPLICA IDENTITY FULL)
    Full(Tuple),
}

/// A table as a Relation message describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The table's OID, which later messages refer to.
    pub id: u32,
    /// The schema; pgoutput sends "" for `pg_catalog`.
    pub schema: String,
    /// The table's name.
    pub name: String,
    /// `relreplident`: b'd' default, b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    /// The columns in the order tuples carry them (dropped and generated
    /// columns are left out by the server).
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Whether the column is part of the replica identity (flags & 1).
    pub key: bool,
    /// The column's name.
    pub name: String,
    /// The OID of the column's type.
    pub type_oid: u32,
    /// `atttypmod`, -1 when the type has none.
    pub type_modifier: i32,
}

/// The values of one row, in the relation's column order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tuple(pub Vec<Value>);

/// One column's value in a [`Tuple`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// 'u': an unchanged TOASTed value the message does not carry
    UnchangedToast,
    /// 't': the value in the type's text output, a slice of the message.
    Text(Bytes),
    /// 'b' (binary) is not requested; kept so decoding never fails on it
    Binary(Bytes),
}

/// Why a pgoutput message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The message had no bytes at all, not even a tag.
    #[error("empty pgoutput message")]
    Empty,
    /// The message ended before a field it must hold.
    #[error("truncated pgoutput {message} message: it ends before the {field}")]
    Truncated {
        /// Which message: "Relation", "Insert", ...
        message: &'static str,
        /// The field that is missing.
        field: &'static str,
    },
    /// A byte that announces what follows was none of those allowed there.
    #[error("pgoutput {message} message: expected {expected} but found byte 0x{found:02x}")]
    BadTag {
        /// Which message.
        message: &'static str,
        /// What the byte may be, in words.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// A name was not valid UTF-8.
    #[error("pgoutput {message} message: the {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Which message.
        message: &'static str,
        /// Which name.
        field: &'static str,
    },
    /// A column value's length was negative.
    #[error("pgoutput {message} message: column value length {length} is negative")]
    NegativeLength {
        /// Which message.
        message: &'static str,
        /// The length as sent.
        length: i32,
    },
    /// Bytes were left over after the message: most likely a protocol
    /// version other than 1.
    #[error("pgoutput {message} message: {count} bytes left over after its last field")]
    TrailingBytes {
        /// Which message.
        message: &'static str,
        /// How many bytes were not read.
        count: usize,
    },
}

/// Decodes one pgoutput (protocol version 1) message, tag byte included.
/// Text and binary column values are slices of `data`, not copies.
pub fn decode(data: &Bytes) -> Result<Change, DecodeError> {
    let (&tag, _) = data.split_first().ok_or(DecodeError::Empty)?;
    let message = match tag {
        b'R' => "Relation",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        other => return Ok(Change::Ignored(other)),
    };
    let mut reader = Reader {
        data,
        pos: 1,
        message,
    };
    let change = match tag {
        b'R' => Change::Relation(reader.relation()?),
        b'I' => {
            let relation = reader.u32("relation id")?;
            reader.expect(b"N", "'N' (new tuple)")?;
            Change::Insert {
                relation,
                new: reader.tuple()?,
            }
        }
        b'U' => {
            let relation = reader.u32("relation id")?;
            let old = match reader.u8("tuple kind")? {
                b'K' => Some(OldTuple::Key(reader.tuple()?)),
                b'O' => Some(OldTuple::Full(reader.tuple()?)),
                b'N' => None,
                found => {
                    return Err(DecodeError::BadTag {
                        message,
                        expected: "'K', 'O' or 'N' (tuple kind)",
                        found,
                    })
                }
            };
            if old.is_some() {
                reader.expect(b"N", "'N' (new tuple)")?;
            }
            Change::Update {
                relation,
                old,
                new: reader.tuple()?,
            }
        }
        b'D' => {
            let relation = reader.u32("relation id")?;
            let old = match reader.u8("tuple kind")? {
                b'K' => OldTuple::Key(reader.tuple()?),
                b'O' => OldTuple::Full(reader.tuple()?),
                found => {
                    return Err(DecodeError::BadTag {
                        message,
                        expected: "'K' or 'O' (old tuple kind)",
                        found,
                    })
                }
            };
            Change::Delete { relation, old }
        }
        // Only b'T' is left: the tags above returned early.
        _ => {
            let count = reader.u32("relation count")?;
            // The option bits (CASCADE, RESTART IDENTITY) say nothing about
            // the rows, which are gone either way.
            reader.u8("options")?;
            // Bounded by what the message can hold, so a corrupt count
            // cannot ask for gigabytes.
            let mut relations = Vec::with_capacity((count as usize).min(reader.remaining() / 4));
            for _ in 0..count {
                relations.push(reader.u32("relation id")?);
            }
            Change::Truncate { relations }
        }
    };
    reader.finish()?;
    Ok(change)
}

/// A cursor over one message that reports what is missing in its words.
struct Reader<'a> {
    data: &'a Bytes,
    pos: usize,
    message: &'static str,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.data.len())
            .ok_or(DecodeError::Truncated {
                message: self.message,
                field,
            })?;
        let bytes = &self.data[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N, field)?);
        Ok(array)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Reads one byte that must be among `allowed`.
    fn expect(&mut self, allowed: &[u8], expected: &'static str) -> Result<u8, DecodeError> {
        let found = self.u8(expected)?;
        if allowed.contains(&found) {
            Ok(found)
        } else {
            Err(DecodeError::BadTag {
                message: self.message,
                expected,
                found,
            })
        }
    }

    /// A NUL-terminated UTF-8 string.
    fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or(DecodeError::Truncated {
                message: self.message,
                field,
            })?;
        let text = std::str::from_utf8(&rest[..len])
            .map_err(|_| DecodeError::InvalidUtf8 {
                message: self.message,
                field,
            })?
            .to_owned();
        self.pos += len + 1;
        Ok(text)
    }

    fn relation(&mut self) -> Result<Relation, DecodeError> {
        let id = self.u32("relation id")?;
        let schema = self.string("schema name")?;
        let name = self.string("table name")?;
        let replica_identity = self.u8("replica identity")?;
        let count = self.u16("column count")?;
        let mut columns = Vec::with_capacity(usize::from(count).min(self.remaining() / 10));
        for _ in 0..count {
            let flags = self.u8("column flags")?;
            columns.push(Column {
                key: flags & 1 != 0,
                name: self.string("column name")?,
                type_oid: self.u32("column type")?,
                type_modifier: self.i32("column type modifier")?,
            });
        }
        Ok(Relation {
            id,
            schema,
            name,
            replica_identity,
            columns,
        })
    }

    /// TupleData: a column count, then each column's kind and value.
    fn tuple(&mut self) -> Result<Tuple, DecodeError> {
        let count = self.u16("tuple column count")?;
        let mut values = Vec::with_capacity(usize::from(count).min(self.remaining()));
        for _ in 0..count {
            let value = match self.u8("column value kind")? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let length = self.i32("column value length")?;
                    let length =
                        usize::try_from(length).map_err(|_| DecodeError::NegativeLength {
                            message: self.message,
                            length,
                        })?;
                    let start = self.pos;
                    self.take(length, "column value")?;
                    let bytes = self.data.slice(start..start + length);
                    if kind == b't' {
                        Value::Text(bytes)
                    } else {
                        Value::Binary(bytes)
                    }
                }
                found => {
                    return Err(DecodeError::BadTag {
                        message: self.message,
                        expected: "'n', 'u', 't' or 'b' (column value kind)",
                        found,
                    })
                }
            };
            values.push(value);
        }
        Ok(Tuple(values))
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                count,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages the way pgoutput's `logicalrep_write_*` do.
    #[derive(Default)]
    struct Msg(Vec<u8>);

    impl Msg {
        fn new(tag: u8) -> Self {
            Msg(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn string(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, v: &str) -> Self {
            let mut m = self.u8(b't').i32(v.len() as i32);
            m.0.extend_from_slice(v.as_bytes());
            m
        }
        fn bytes(self) -> Bytes {
            Bytes::from(self.0)
        }
    }

    fn relation_msg() -> Bytes {
        Msg::new(b'R')
            .u32(16384)
            .string("public")
            .string("orders")
            .u8(b'd')
            .u16(2)
            .u8(1)
            .string("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .string("note")
            .u32(1043)
            .i32(44)
            .bytes()
    }

    /// A tuple of (id, NULL, unchanged toast, 'héllo', binary 0x01).
    fn tuple(m: Msg) -> Msg {
        m.u16(5)
            .text("42")
            .u8(b'n')
            .u8(b'u')
            .text("héllo")
            .u8(b'b')
            .i32(1)
            .u8(1)
    }

    fn expected_tuple() -> Tuple {
        Tuple(vec![
            Value::Text(Bytes::from_static(b"42")),
            Value::Null,
            Value::UnchangedToast,
            Value::Text(Bytes::from("héllo")),
            Value::Binary(Bytes::from_static(&[1])),
        ])
    }

    fn insert_msg() -> Bytes {
        tuple(Msg::new(b'I').u32(16384).u8(b'N')).bytes()
    }

    fn update_msg(old: Option<u8>) -> Bytes {
        let mut m = Msg::new(b'U').u32(7);
        if let Some(kind) = old {
            m = tuple(m.u8(kind));
        }
        tuple(m.u8(b'N')).bytes()
    }

    fn delete_msg(kind: u8) -> Bytes {
        tuple(Msg::new(b'D').u32(7).u8(kind)).bytes()
    }

    fn truncate_msg() -> Bytes {
        Msg::new(b'T').u32(2).u8(1).u32(10).u32(11).bytes()
    }

    fn valid_messages() -> Vec<Bytes> {
        vec![
            relation_msg(),
            insert_msg(),
            update_msg(None),
            update_msg(Some(b'K')),
            update_msg(Some(b'O')),
            delete_msg(b'K'),
            delete_msg(b'O'),
            truncate_msg(),
        ]
    }

    #[test]
    fn relation() {
        let change = decode(&relation_msg()).unwrap();
        assert_eq!(
            change,
            Change::Relation(Relation {
                id: 16384,
                schema: "public".into(),
                name: "orders".into(),
                replica_identity: b'd',
                columns: vec![
                    Column {
                        key: true,
                        name: "id".into(),
                        type_oid: 23,
                        type_modifier: -1
                    },
                    Column {
                        key: false,
                        name: "note".into(),
                        type_oid: 1043,
                        type_modifier: 44
                    },
                ],
            })
        );
    }

    #[test]
    fn insert_values_are_slices_of_the_message() {
        let data = insert_msg();
        let change = decode(&data).unwrap();
        assert_eq!(
            change,
            Change::Insert {
                relation: 16384,
                new: expected_tuple()
            }
        );
        let Change::Insert { new, .. } = change else {
            unreachable!()
        };
        let Value::Text(text) = &new.0[0] else {
            unreachable!()
        };
        let range = data.as_ptr_range();
        assert!(range.contains(&text.as_ptr()), "no copy");
    }

    #[test]
    fn update_with_and_without_old_row() {
        assert_eq!(
            decode(&update_msg(None)).unwrap(),
            Change::Update {
                relation: 7,
                old: None,
                new: expected_tuple()
            }
        );
        assert_eq!(
            decode(&update_msg(Some(b'K'))).unwrap(),
            Change::Update {
                relation: 7,
                old: Some(OldTuple::Key(expected_tuple())),
                new: expected_tuple()
            }
        );
        assert_eq!(
            decode(&update_msg(Some(b'O'))).unwrap(),
            Change::Update {
                relation: 7,
                old: Some(OldTuple::Full(expected_tuple())),
                new: expected_tuple()
            }
        );
    }

    #[test]
    fn delete() {
        assert_eq!(
            decode(&delete_msg(b'K')).unwrap(),
            Change::Delete {
                relation: 7,
                old: OldTuple::Key(expected_tuple())
            }
        );
        assert_eq!(
            decode(&delete_msg(b'O')).unwrap(),
            Change::Delete {
                relation: 7,
                old: OldTuple::Full(expected_tuple())
            }
        );
    }

    #[test]
    fn truncate() {
        assert_eq!(
            decode(&truncate_msg()).unwrap(),
            Change::Truncate {
                relations: vec![10, 11]
            }
        );
        assert_eq!(
            decode(&Msg::new(b'T').u32(0).u8(0).bytes()).unwrap(),
            Change::Truncate { relations: vec![] }
        );
    }

    #[test]
    fn other_messages_are_ignored_by_tag() {
        for tag in [b'Y', b'O', b'B', b'C', b'M', b'S', b'Z', 0] {
            assert_eq!(
                decode(&Msg::new(tag).u32(1).bytes()).unwrap(),
                Change::Ignored(tag)
            );
        }
        assert!(matches!(decode(&Bytes::new()), Err(DecodeError::Empty)));
    }

    #[test]
    fn every_proper_prefix_is_an_error() {
        for message in valid_messages() {
            assert!(decode(&message).is_ok());
            for len in 0..message.len() {
                let prefix = message.slice(..len);
                assert!(
                    decode(&prefix).is_err(),
                    "prefix of {len} bytes of {message:?} decoded"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for message in valid_messages() {
            let mut longer = message.to_vec();
            longer.push(0);
            let err = decode(&Bytes::from(longer)).unwrap_err();
            assert!(
                matches!(err, DecodeError::TrailingBytes { count: 1, .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_say_which_message_and_what() {
        let bad_kind = Msg::new(b'I').u32(1).u8(b'N').u16(1).u8(b'x').bytes();
        assert_eq!(
            decode(&bad_kind).unwrap_err().to_string(),
            "pgoutput Insert message: expected 'n', 'u', 't' or 'b' (column value kind) \
             but found byte 0x78"
        );
        let no_new = Msg::new(b'I').u32(1).u8(b'K').bytes();
        assert!(matches!(
            decode(&no_new),
            Err(DecodeError::BadTag { found: b'K', .. })
        ));
        let bad_delete = Msg::new(b'D').u32(1).u8(b'N').u16(0).bytes();
        assert!(matches!(
            decode(&bad_delete),
            Err(DecodeError::BadTag { found: b'N', .. })
        ));
        let bad_update = Msg::new(b'U').u32(1).u8(b'X').bytes();
        assert!(matches!(
            decode(&bad_update),
            Err(DecodeError::BadTag { found: b'X', .. })
        ));
        let mut bad_name = Msg::new(b'R').u32(1).string("public");
        bad_name.0.extend_from_slice(&[0xff, 0xfe, 0]);
        let bad_name = bad_name.u8(b'd').u16(0).bytes();
        assert_eq!(
            decode(&bad_name).unwrap_err().to_string(),
            "pgoutput Relation message: the table name is not valid UTF-8"
        );
        let negative = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .i32(-1)
            .bytes();
        assert!(matches!(
            decode(&negative),
            Err(DecodeError::NegativeLength { length: -1, .. })
        ));
        let truncated = Msg::new(b'I').u32(1).u8(b'N').u16(1).text("abc").bytes();
        let truncated = truncated.slice(..truncated.len() - 1);
        assert_eq!(
            decode(&truncated).unwrap_err().to_string(),
            "truncated pgoutput Insert message: it ends before the column value"
        );
    }

    #[test]
    fn huge_counts_do_not_allocate_or_panic() {
        let truncate = Msg::new(b'T').u32(u32::MAX).u8(0).bytes();
        assert!(decode(&truncate).is_err());
        let tuple = Msg::new(b'I').u32(1).u8(b'N').u16(u16::MAX).bytes();
        assert!(decode(&tuple).is_err());
        let value = Msg::new(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b'b')
            .i32(i32::MAX)
            .bytes();
        assert!(decode(&value).is_err());
    }

    #[test]
    fn corrupted_messages_never_panic() {
        // A fixed xorshift, so a failure reproduces.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for message in valid_messages() {
            for _ in 0..2000 {
                let mut bytes = message.to_vec();
                for _ in 0..=(next() % 4) {
                    let at = (next() as usize) % bytes.len();
                    bytes[at] = next() as u8;
                }
                let cut = (next() as usize) % (bytes.len() + 1);
                let _ = decode(&Bytes::from(bytes[..cut.max(1)].to_vec()));
                let _ = decode(&Bytes::from(bytes));
            }
        }
    }
}
