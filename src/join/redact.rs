//! Query-string redaction: secret-looking parameters keep their name and lose their value
//! (`code=REDACTED`), so the path stays useful for audit while never holding a credential.

use std::borrow::Cow;

/// Parameter names redacted by default (case-insensitive). Configurable with `redact_params`.
pub const DEFAULT_PARAMS: &[&str] = &[
    "code",
    "access_token",
    "id_token",
    "refresh_token",
    "client_secret",
    "token",
    "password",
    "sig",
    "signature",
    "key",
    "api_key",
    "apikey",
    "secret",
    "client_assertion",
    "assertion",
    "session_state",
];

pub const REDACTED: &str = "REDACTED";

#[derive(Debug, Clone)]
pub struct Redactor {
    names: Vec<String>,
}

impl Default for Redactor {
    fn default() -> Self {
        Redactor::new(DEFAULT_PARAMS.iter().copied())
    }
}

impl Redactor {
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        Redactor {
            names: names.into_iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    fn is_secret(&self, name: &str) -> bool {
        if self.names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            return true;
        }
        // `access%5Ftoken` is `access_token` to the server that reads it.
        if name.contains('%') || name.contains('+') {
            let decoded = percent_decode(name);
            return self.names.iter().any(|n| n.eq_ignore_ascii_case(&decoded));
        }
        false
    }

    /// Returns the path with secret query values replaced; borrows when nothing changes.
    pub fn redact_path<'a>(&self, path: &'a str) -> Cow<'a, str> {
        let Some(q) = path.find('?') else {
            return Cow::Borrowed(path);
        };
        let (base, query) = (&path[..q], &path[q + 1..]);
        let needs = query
            .split('&')
            .any(|p| self.is_secret(p.split_once('=').map_or(p, |(n, _)| n)));
        if !needs {
            return Cow::Borrowed(path);
        }
        let mut out = String::with_capacity(path.len());
        out.push_str(base);
        out.push('?');
        for (i, param) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match param.split_once('=') {
                Some((name, _)) if self.is_secret(name) => {
                    out.push_str(name);
                    out.push('=');
                    out.push_str(REDACTED);
                }
                _ => out.push_str(param),
            }
        }
        Cow::Owned(out)
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let r = Redactor::default();
        let cases = [
            ("/orders", "/orders"),
            ("/orders?page=2", "/orders?page=2"),
            ("/cb?code=abc&state=xyz", "/cb?code=REDACTED&state=xyz"),
            ("/x?Access_Token=eyJ.a.b", "/x?Access_Token=REDACTED"),
            (
                "/x?a=1&sig=zz&key=k&keep=1",
                "/x?a=1&sig=REDACTED&key=REDACTED&keep=1",
            ),
            ("/x?access%5Ftoken=eyJ", "/x?access%5Ftoken=REDACTED"),
            ("/x?token", "/x?token"),
            ("/x?token=", "/x?token=REDACTED"),
            ("/x?tokenizer=1", "/x?tokenizer=1"),
            ("/x?%zz=1&password=p", "/x?%zz=1&password=REDACTED"),
            ("/x?%", "/x?%"),
        ];
        for (input, want) in cases {
            assert_eq!(r.redact_path(input), want, "input {input}");
        }
    }

    #[test]
    fn configurable() {
        let r = Redactor::new(["session"]);
        assert_eq!(
            r.redact_path("/a?session=1&code=2"),
            "/a?session=REDACTED&code=2"
        );
    }
}
