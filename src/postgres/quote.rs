//! Quoting names and values into SQL text, for the statements that cannot
//! take parameters (LISTEN, DDL).

/// `ident` quoted as a PostgreSQL identifier.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// `text` quoted as a PostgreSQL string literal.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// `items` as a PostgreSQL `text[]` expression.
pub fn text_array(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| quote_literal(item)).collect();
    format!("ARRAY[{}]::text[]", quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_literals_and_arrays() {
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(
            text_array(&["a".into(), "b'c".into()]),
            "ARRAY['a', 'b''c']::text[]"
        );
    }
}
