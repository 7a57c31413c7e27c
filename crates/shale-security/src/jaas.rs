//! Kafka's `sasl.jaas.config` values: `LoginModule flag key="value" ... ;`. Only the options
//! are used (PLAIN's `user_NAME` entries, OAUTHBEARER's settings); the module name and
//! control flag are checked for shape and otherwise ignored.

use std::collections::BTreeMap;

/// The options of the single login module entry in `config`.
pub fn parse(config: &str) -> Result<BTreeMap<String, String>, String> {
    let tokens = tokenize(config)?;
    let mut it = tokens.into_iter().peekable();
    let Some(Token::Word(_module)) = it.next() else {
        return Err("sasl.jaas.config: expected a login module class name".into());
    };
    let Some(Token::Word(flag)) = it.next() else {
        return Err("sasl.jaas.config: expected a control flag after the login module".into());
    };
    if !["required", "requisite", "sufficient", "optional"].contains(&flag.to_lowercase().as_str())
    {
        return Err(format!("sasl.jaas.config: invalid control flag {flag:?}"));
    }
    let mut options = BTreeMap::new();
    loop {
        match it.next() {
            Some(Token::Semicolon) => break,
            Some(Token::Word(key)) => {
                if it.next() != Some(Token::Equals) {
                    return Err(format!("sasl.jaas.config: expected '=' after {key:?}"));
                }
                let value = match it.next() {
                    Some(Token::Word(v)) | Some(Token::Quoted(v)) => v,
                    _ => return Err(format!("sasl.jaas.config: expected a value for {key:?}")),
                };
                options.insert(key, value);
            }
            _ => return Err("sasl.jaas.config: the entry must end with ';'".into()),
        }
    }
    if it.next().is_some() {
        return Err("sasl.jaas.config must hold exactly one login module".into());
    }
    Ok(options)
}

#[derive(Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Quoted(String),
    Equals,
    Semicolon,
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '=' => {
                chars.next();
                out.push(Token::Equals);
            }
            ';' => {
                chars.next();
                out.push(Token::Semicolon);
            }
            '"' => {
                chars.next();
                let mut v = String::new();
                loop {
                    match chars.next() {
                        None => return Err("sasl.jaas.config: unterminated quoted value".into()),
                        Some('"') => break,
                        // Java's StreamTokenizer escapes, as JAAS files use them.
                        Some('\\') => match chars.next() {
                            Some('n') => v.push('\n'),
                            Some('t') => v.push('\t'),
                            Some('r') => v.push('\r'),
                            Some(other) => v.push(other),
                            None => return Err("sasl.jaas.config: dangling escape".into()),
                        },
                        Some(other) => v.push(other),
                    }
                }
                out.push(Token::Quoted(v));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || c == '=' || c == ';' || c == '"' {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_of_a_plain_login_module() {
        let o = parse(
            r#"org.apache.kafka.common.security.plain.PlainLoginModule required
               username="admin" password="a b\"c" user_alice=secret;"#,
        )
        .unwrap();
        assert_eq!(o["username"], "admin");
        assert_eq!(o["password"], "a b\"c");
        assert_eq!(o["user_alice"], "secret");
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "",
            "Module",
            "Module required user=\"x\"",
            "Module maybe;",
            "Module required user;",
            "Module required user=\"open;",
            "A required; B required;",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
