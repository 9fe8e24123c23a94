//! How `skor tail` shows an event: on a terminal, the operation coloured,
//! the table in bold, then the row and any further field; anywhere else
//! the payload exactly as delivered, one per line, for tools like `jq`.

use std::io::Write;

use anstyle::{AnsiColor, Style};
use serde_json::value::RawValue;
use skor_sink_api::Op;
use tracing::warn;

use super::Event;

/// Writes events to `out`, readable or as JSON lines.
pub struct Printer<W: Write> {
    out: W,
    /// Readable lines instead of the payload; coloured when `colour`.
    readable: bool,
    colour: bool,
}

impl<W: Write> Printer<W> {
    /// Every payload as delivered, one per line.
    pub fn json(out: W) -> Self {
        Self {
            out,
            readable: false,
            colour: false,
        }
    }

    /// One readable line per event, coloured or not.
    pub fn readable(out: W, colour: bool) -> Self {
        Self {
            out,
            readable: true,
            colour,
        }
    }

    /// Prints `event`; `false` once the output is closed (`skor tail |
    /// head` after head exited), which ends tail.
    pub fn event(&mut self, event: &Event) -> bool {
        let line = if self.readable {
            self.line(event).into_bytes()
        } else {
            let mut line = event.payload.to_vec();
            line.push(b'\n');
            line
        };
        self.write(&line)
    }

    fn write(&mut self, line: &[u8]) -> bool {
        match self.out.write_all(line).and_then(|()| self.out.flush()) {
            Ok(()) => true,
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => false,
            Err(error) => {
                warn!(%error, "cannot write to standard output");
                true
            }
        }
    }

    /// Says that an oversized payload was gone before tail could read it;
    /// `false` once the output is closed.
    pub fn gone(&mut self, id: i64, channel: &str) -> bool {
        let text = format!(
            "oversized payload {id} on channel {channel} is gone: the running daemon took it \
             before tail could read it"
        );
        if self.readable {
            let dim = Style::new().dimmed();
            let line = format!("{}\n", self.paint(dim, &format!("({text})")));
            self.write(line.as_bytes())
        } else {
            // Standard output carries only payloads.
            warn!(id, channel, "{text}");
            true
        }
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.colour {
            format!("{}{text}{}", style.render(), style.render_reset())
        } else {
            text.to_string()
        }
    }

    /// `INSERT public.orders {"id":1,...}`, then `key=value` for each
    /// field after `data` (`old`, `old_key`, an id field...).
    fn line(&self, event: &Event) -> String {
        let colour = match event.op {
            Op::Insert => AnsiColor::Green,
            Op::Update => AnsiColor::Yellow,
            Op::Delete => AnsiColor::Red,
            Op::Read => AnsiColor::Cyan,
        };
        let op = self.paint(
            Style::new().fg_color(Some(colour.into())).bold(),
            &format!("{:<6}", event.op.as_str()),
        );
        let table = self.paint(
            Style::new().bold(),
            &format!("{}.{}", event.schema, event.table),
        );
        let text = String::from_utf8_lossy(&event.payload);
        let mut line = format!("{op} {table}");
        match fields(&text) {
            Some(fields) => {
                let dim = Style::new().dimmed();
                for (name, value) in fields {
                    match name.as_str() {
                        "table" | "schema" | "op" => {}
                        "data" => {
                            line.push(' ');
                            line.push_str(value.get());
                        }
                        _ => {
                            line.push(' ');
                            line.push_str(&self.paint(dim, &format!("{name}=")));
                            line.push_str(value.get());
                        }
                    }
                }
            }
            None => {
                line.push(' ');
                line.push_str(&text);
            }
        }
        line.push('\n');
        line
    }
}

/// The payload's top-level fields, in their order; `None` if it is not a
/// JSON object.
fn fields(payload: &str) -> Option<Vec<(String, &RawValue)>> {
    struct Fields;
    impl<'de> serde::de::Visitor<'de> for Fields {
        type Value = Vec<(String, &'de RawValue)>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut fields = Vec::new();
            while let Some(name) = map.next_key::<String>()? {
                fields.push((name, map.next_value::<&'de RawValue>()?));
            }
            Ok(fields)
        }
    }
    use serde::Deserializer as _;
    let mut deserializer = serde_json::Deserializer::from_str(payload);
    let fields = deserializer.deserialize_map(Fields).ok()?;
    deserializer.end().ok()?;
    Some(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(payload: &str, op: Op) -> Event {
        Event {
            channel: "skor".into(),
            schema: "public".into(),
            table: "orders".into(),
            op,
            payload: payload.to_string().into(),
        }
    }

    fn printed(printer: impl FnOnce(&mut Vec<u8>) -> Printer<&mut Vec<u8>>, e: &Event) -> String {
        let mut out = Vec::new();
        printer(&mut out).event(e);
        String::from_utf8(out).unwrap()
    }

    const PAYLOAD: &str = r#"{"table" : "orders", "schema" : "public", "op" : "UPDATE", "data" : {"id":1,"s":"paid"}, "old" : {"id":1,"s":"new"}}"#;

    #[test]
    fn json_lines_are_the_payload_exactly() {
        let e = event(PAYLOAD, Op::Update);
        assert_eq!(printed(|o| Printer::json(o), &e), format!("{PAYLOAD}\n"));
    }

    #[test]
    fn readable_lines_show_op_table_data_and_the_rest() {
        let e = event(PAYLOAD, Op::Update);
        assert_eq!(
            printed(|o| Printer::readable(o, false), &e),
            "UPDATE public.orders {\"id\":1,\"s\":\"paid\"} old={\"id\":1,\"s\":\"new\"}\n"
        );
        let coloured = printed(|o| Printer::readable(o, true), &e);
        assert!(coloured.starts_with("\u{1b}["), "{coloured:?}");
        assert!(coloured.contains("UPDATE"));
        assert!(coloured.contains("public.orders"));
        let odd = event("not json", Op::Insert);
        assert_eq!(
            printed(|o| Printer::readable(o, false), &odd),
            "INSERT public.orders not json\n"
        );
    }
}
