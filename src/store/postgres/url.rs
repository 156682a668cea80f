//! The database URL: a secret. It is shown only with its password replaced, in logs, errors and
//! `Debug` output alike.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

/// `postgres://USER:PASSWORD@HOST:PORT/DATABASE?...`, kept whole but never printed whole.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The URL with its password: only for handing to the driver.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Parses the URL for the driver. The error never repeats the URL.
    pub fn connect_options(&self) -> Result<PgConnectOptions, String> {
        if !(self.0.starts_with("postgres://") || self.0.starts_with("postgresql://")) {
            return Err("it must start with postgres:// or postgresql://".into());
        }
        PgConnectOptions::from_str(&self.0).map_err(|e| redact(&e.to_string()))
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(DatabaseUrl(s.to_owned()))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", redact(&self.0))
    }
}

/// Replaces the password of every URL in `text` (userinfo `user:secret@` and a `password=`
/// query parameter) with `****`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        // The authority ends at the first '/', '?' or '#' (or whitespace, in running text).
        let auth_end = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..auth_end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":****");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &rest[auth_end..];
    }
    out.push_str(rest);
    redact_param(&out)
}

fn redact_param(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut from = 0;
    while let Some(i) = lower[from..].find("password=") {
        let start = from + i + "password=".len();
        let end = text[start..]
            .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
            .map_or(text.len(), |e| start + e);
        out.push_str(&text[last..start]);
        out.push_str("****");
        last = end;
        from = end;
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "postgres://audit:s3cr%40t@db.example:5432/mesh",
                "postgres://audit:****@db.example:5432/mesh",
            ),
            (
                "postgresql://audit@db/mesh?password=hunter2&sslmode=require",
                "postgresql://audit@db/mesh?password=****&sslmode=require",
            ),
            ("postgres://db/mesh", "postgres://db/mesh"),
            (
                "error connecting to postgres://u:p@h/d: refused",
                "error connecting to postgres://u:****@h/d: refused",
            ),
            ("postgres://u:p:q@h", "postgres://u:****@h"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
            let url = DatabaseUrl::new(input);
            assert!(!format!("{url} {url:?}").contains("s3cr"), "{input}");
            assert!(!format!("{url} {url:?}").contains("hunter2"), "{input}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echo() {
        for bad in ["mysql://u:pw@h/d", "postgres://u:pw@h:notaport/d", "pw"] {
            let err = DatabaseUrl::new(bad)
                .connect_options()
                .expect_err("refused");
            assert!(!err.contains("pw@") && !err.contains(":pw"), "{err}");
        }
    }
}
