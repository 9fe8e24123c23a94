//! `${VAR}` interpolation in every string value of the config.
//!
//! Done on the parsed document, value by value, so a variable holding quotes
//! or backslashes cannot break the TOML around it, and each value is written
//! back in place so line numbers in later errors still match the file.

use toml_edit::{ImDocument, Item, Value};

use super::ConfigError;

/// Replaces `${NAME}` (or `${NAME:-default}`) in every string value of
/// `text`; `$${` stands for a literal `${`.
pub fn interpolate(
    text: &str,
    file: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ConfigError> {
    if !text.contains("${") {
        return Ok(text.to_string());
    }
    let doc = ImDocument::parse(text)
        .map_err(|e| ConfigError::at(file, text, e.span(), None, e.message().trim().to_string()))?;
    let mut edits = Vec::new();
    let mut path = Vec::new();
    walk_item(doc.as_item(), &mut path, &mut |path, value| {
        let Value::String(s) = value else {
            return Ok(());
        };
        if !s.value().contains("${") {
            return Ok(());
        }
        let span = value.span();
        let expanded = expand(s.value(), lookup).map_err(|message| {
            ConfigError::at(file, text, span.clone(), Some(join_path(path)), message)
        })?;
        if let Some(span) = span {
            edits.push((span, encode(&expanded)));
        }
        Ok(())
    })?;
    edits.sort_by_key(|(span, _)| span.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (span, replacement) in edits {
        out.push_str(&text[at..span.start]);
        out.push_str(&replacement);
        at = span.end;
    }
    out.push_str(&text[at..]);
    Ok(out)
}

type Visit<'a> = dyn FnMut(&[String], &Value) -> Result<(), ConfigError> + 'a;

fn walk_item(item: &Item, path: &mut Vec<String>, visit: &mut Visit) -> Result<(), ConfigError> {
    match item {
        Item::Value(value) => walk_value(value, path, visit),
        Item::Table(table) => {
            for (key, item) in table.iter() {
                path.push(key.to_string());
                walk_item(item, path, visit)?;
                path.pop();
            }
            Ok(())
        }
        Item::ArrayOfTables(array) => {
            for (i, table) in array.iter().enumerate() {
                path.push(format!("[{i}]"));
                for (key, item) in table.iter() {
                    path.push(key.to_string());
                    walk_item(item, path, visit)?;
                    path.pop();
                }
                path.pop();
            }
            Ok(())
        }
        Item::None => Ok(()),
    }
}

fn walk_value(value: &Value, path: &mut Vec<String>, visit: &mut Visit) -> Result<(), ConfigError> {
    match value {
        Value::Array(array) => {
            for (i, v) in array.iter().enumerate() {
                path.push(format!("[{i}]"));
                walk_value(v, path, visit)?;
                path.pop();
            }
            Ok(())
        }
        Value::InlineTable(table) => {
            for (key, v) in table.iter() {
                path.push(key.to_string());
                walk_value(v, path, visit)?;
                path.pop();
            }
            Ok(())
        }
        other => visit(path, other),
    }
}

/// `["route", "[0]", "sinks"]` as `route[0].sinks`.
pub fn join_path(path: &[String]) -> String {
    let mut out = String::new();
    for segment in path {
        if !out.is_empty() && !segment.starts_with('[') {
            out.push('.');
        }
        out.push_str(segment);
    }
    out
}

/// Expands the variables of one string.
fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find('$') {
        out.push_str(&rest[..start]);
        let after = &rest[start..];
        if let Some(literal) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = literal;
        } else if let Some(body) = after.strip_prefix("${") {
            let end = body
                .find('}')
                // The value is not quoted: it may hold a secret.
                .ok_or_else(|| {
                    format!(
                        "`${{` at byte {} of the value has no closing `}}`",
                        input.len() - after.len()
                    )
                })?;
            let (name, default) = match body[..end].split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (&body[..end], None),
            };
            match (lookup(name), default) {
                (Some(value), _) => out.push_str(&value),
                (None, Some(default)) => out.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A TOML basic string holding `s`, on one line.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "PASS" => Some("p\"a\\ss".to_string()),
            "HOST" => Some("db".to_string()),
            _ => None,
        }
    }

    #[test]
    fn expands_in_any_string_and_keeps_lines() {
        let text = "[source]\ndsn = \"host=${HOST} password=${PASS}\"\nchannels = ['${HOST}', \"$${HOST}\"]\n";
        let out = interpolate(text, "skor.toml", &lookup).unwrap();
        let value: toml::Value = toml::from_str(&out).unwrap();
        assert_eq!(
            value["source"]["dsn"].as_str(),
            Some("host=db password=p\"a\\ss")
        );
        assert_eq!(value["source"]["channels"][0].as_str(), Some("db"));
        assert_eq!(value["source"]["channels"][1].as_str(), Some("${HOST}"));
        assert_eq!(out.lines().count(), text.lines().count());
    }

    #[test]
    fn an_unclosed_variable_is_reported_without_the_value() {
        let text = "[source]\ndsn = \"host=db password=sekret${HOST\"\n";
        let error = interpolate(text, "skor.toml", &lookup)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "skor.toml:2:7: key `source.dsn`: `${` at byte 23 of the value has no closing `}`"
        );
    }

    #[test]
    fn defaults_and_missing_variables() {
        assert_eq!(expand("${NOPE:-x}y", &lookup).unwrap(), "xy");
        let text = "[source]\n\ndsn = \"${NOPE}\"\n";
        let error = interpolate(text, "skor.toml", &lookup)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "skor.toml:3:7: key `source.dsn`: environment variable `NOPE` is not set \
             (write `${NOPE:-default}` to give a default)"
        );
    }
}
