//! The claims an audit record uses, read from any of the three places they arrive in:
//! the proxy's `google.protobuf.Struct` (jwt_authn dynamic metadata), or the JSON payload of a
//! raw token or of a forwarded claims header.
//!
//! Both readers feed one [`Claims::set`], so a claim means the same thing whatever carried it.
//! Unknown claims are skipped without being copied. A claim that is absent stays `None` (NULL in
//! the record); a list claim that is present but empty is `Some(vec![])`.

use serde_json::Value as Json;
use thiserror::Error;

use crate::ingest::pbstruct::{StructError, StructView, Value};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClaimsError {
    #[error("claims are not a JSON object")]
    NotJson,
}

/// The claims the Identity columns and the token checks need. Owned: a raw token's claims are
/// cached and shared by every record that carries the same token.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub tid: Option<String>,
    pub oid: Option<String>,
    pub sub: Option<String>,
    pub upn: Option<String>,
    pub preferred_username: Option<String>,
    pub unique_name: Option<String>,
    pub email: Option<String>,
    pub name: Option<String>,
    pub azp: Option<String>,
    pub appid: Option<String>,
    pub groups: Option<Vec<String>>,
    /// `_claim_names` names `groups`, or `hasgroups` is true.
    pub groups_overage: bool,
    pub roles: Option<Vec<String>>,
    /// `scp`, split on spaces (or as the list Istio made of it with `spaceDelimitedClaims`).
    pub scopes: Option<Vec<String>>,
    pub iss: Option<String>,
    /// `aud` values, and whether `aud` was a list.
    pub aud: Option<Vec<String>>,
    pub aud_is_list: bool,
    pub ver: Option<String>,
    pub uti: Option<String>,
    pub jti: Option<String>,
    /// Seconds since the epoch.
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub amr: Option<Vec<String>>,
    pub idtyp: Option<String>,
    pub idp: Option<String>,
    pub acct: Option<i64>,
    pub xms_mirid: bool,
}

/// One claim value, whichever encoding it came in.
#[derive(Debug)]
pub(crate) enum ClaimValue<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    List(Vec<String>),
    /// An object; only whether it has a `groups` key matters (for `_claim_names`).
    Object {
        has_groups: bool,
    },
    Other,
}

/// The claims this module reads. Matching the key first means an unknown claim is never copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Tid,
    Oid,
    Sub,
    Upn,
    PreferredUsername,
    UniqueName,
    Email,
    Name,
    Azp,
    Appid,
    Groups,
    ClaimNames,
    HasGroups,
    Roles,
    Scp,
    Iss,
    Aud,
    Ver,
    Uti,
    Jti,
    Iat,
    Exp,
    Nbf,
    Amr,
    Idtyp,
    Idp,
    Acct,
    XmsMirid,
}

impl Field {
    pub(crate) fn of(key: &[u8]) -> Option<Field> {
        Some(match key {
            b"tid" => Field::Tid,
            b"oid" => Field::Oid,
            b"sub" => Field::Sub,
            b"upn" => Field::Upn,
            b"preferred_username" => Field::PreferredUsername,
            b"unique_name" => Field::UniqueName,
            b"email" => Field::Email,
            b"name" => Field::Name,
            b"azp" => Field::Azp,
            b"appid" => Field::Appid,
            b"groups" => Field::Groups,
            b"_claim_names" => Field::ClaimNames,
            b"hasgroups" => Field::HasGroups,
            b"roles" => Field::Roles,
            b"scp" => Field::Scp,
            b"iss" => Field::Iss,
            b"aud" => Field::Aud,
            b"ver" => Field::Ver,
            b"uti" => Field::Uti,
            b"jti" => Field::Jti,
            b"iat" => Field::Iat,
            b"exp" => Field::Exp,
            b"nbf" => Field::Nbf,
            b"amr" => Field::Amr,
            b"idtyp" => Field::Idtyp,
            b"idp" => Field::Idp,
            b"acct" => Field::Acct,
            b"xms_mirid" => Field::XmsMirid,
            _ => return None,
        })
    }
}

impl Claims {
    /// Reads the claims of a Struct (the jwt_authn `payload`), borrowing until a value is kept.
    pub fn from_struct(s: StructView<'_>) -> Result<Claims, StructError> {
        let mut c = Claims::default();
        for entry in s.entries() {
            let (key, value) = entry?;
            let Some(field) = Field::of(key) else {
                continue;
            };
            let v = match value {
                Value::String(_) => value.as_str().map_or(ClaimValue::Other, ClaimValue::Str),
                Value::Number(n) => ClaimValue::Num(n),
                Value::Bool(b) => ClaimValue::Bool(b),
                Value::List(l) => {
                    let mut out = Vec::new();
                    for item in l.iter() {
                        if let Some(s) = item?.as_str() {
                            out.push(s.to_owned());
                        }
                    }
                    ClaimValue::List(out)
                }
                Value::Struct(inner) => ClaimValue::Object {
                    has_groups: inner.get("groups")?.is_some(),
                },
                Value::Null => ClaimValue::Other,
            };
            c.set(field, v);
        }
        Ok(c)
    }

    /// Reads the claims of a JSON payload (a raw token's or a forwarded claims header's).
    pub fn from_json(bytes: &[u8]) -> Result<Claims, ClaimsError> {
        let map: serde_json::Map<String, Json> =
            serde_json::from_slice(bytes).map_err(|_| ClaimsError::NotJson)?;
        let mut c = Claims::default();
        for (key, value) in &map {
            let Some(field) = Field::of(key.as_bytes()) else {
                continue;
            };
            let v = match value {
                Json::String(s) => ClaimValue::Str(s),
                Json::Number(n) => n.as_f64().map_or(ClaimValue::Other, ClaimValue::Num),
                Json::Bool(b) => ClaimValue::Bool(*b),
                Json::Array(items) => ClaimValue::List(
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect(),
                ),
                Json::Object(o) => ClaimValue::Object {
                    has_groups: o.contains_key("groups"),
                },
                Json::Null => ClaimValue::Other,
            };
            c.set(field, v);
        }
        Ok(c)
    }

    pub(crate) fn set(&mut self, field: Field, v: ClaimValue<'_>) {
        match field {
            Field::Tid => self.tid = text(&v),
            Field::Oid => self.oid = text(&v),
            Field::Sub => self.sub = text(&v),
            Field::Upn => self.upn = text(&v),
            Field::PreferredUsername => self.preferred_username = text(&v),
            Field::UniqueName => self.unique_name = text(&v),
            Field::Email => self.email = text(&v),
            Field::Name => self.name = text(&v),
            Field::Azp => self.azp = text(&v),
            Field::Appid => self.appid = text(&v),
            Field::Groups => self.groups = list(v),
            Field::ClaimNames => {
                if matches!(v, ClaimValue::Object { has_groups: true }) {
                    self.groups_overage = true;
                }
            }
            Field::HasGroups => {
                if matches!(v, ClaimValue::Bool(true) | ClaimValue::Str("true")) {
                    self.groups_overage = true;
                }
            }
            Field::Roles => self.roles = list(v),
            Field::Scp => {
                self.scopes = match v {
                    ClaimValue::Str(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
                    // Istio's spaceDelimitedClaims already split it; split again in case an
                    // element still holds several scopes.
                    ClaimValue::List(items) => Some(
                        items
                            .iter()
                            .flat_map(|s| s.split_whitespace())
                            .map(str::to_owned)
                            .collect(),
                    ),
                    _ => None,
                }
            }
            Field::Iss => self.iss = text(&v),
            Field::Aud => {
                (self.aud, self.aud_is_list) = match v {
                    ClaimValue::Str(s) if !s.is_empty() => (Some(vec![s.to_owned()]), false),
                    ClaimValue::List(items) => (Some(items), true),
                    _ => (None, false),
                }
            }
            Field::Ver => {
                self.ver = match v {
                    // A numeric `ver` (not Entra's form, but seen from other issuers) keeps the
                    // `1.0` spelling of the contract.
                    ClaimValue::Num(n) if n.is_finite() => Some(format!("{n:.1}")),
                    _ => text(&v),
                }
            }
            Field::Uti => self.uti = text(&v),
            Field::Jti => self.jti = text(&v),
            Field::Iat => self.iat = seconds(&v),
            Field::Exp => self.exp = seconds(&v),
            Field::Nbf => self.nbf = seconds(&v),
            Field::Amr => self.amr = list(v),
            Field::Idtyp => self.idtyp = text(&v),
            Field::Idp => self.idp = text(&v),
            Field::Acct => self.acct = seconds(&v),
            Field::XmsMirid => self.xms_mirid = text(&v).is_some(),
        }
    }

    /// `upn`, else `preferred_username`, else `unique_name`, else `email`.
    pub fn user_principal(&self) -> Option<&str> {
        self.upn
            .as_deref()
            .or(self.preferred_username.as_deref())
            .or(self.unique_name.as_deref())
            .or(self.email.as_deref())
    }

    /// The calling client application: `azp` (v2) or `appid` (v1).
    pub fn app_id(&self) -> Option<&str> {
        self.azp.as_deref().or(self.appid.as_deref())
    }

    /// `uti`, else `jti`.
    pub fn token_id(&self) -> Option<&str> {
        self.uti.as_deref().or(self.jti.as_deref())
    }

    /// The `audience` column: the configured audience that matched when `aud` is a list, else
    /// the first value.
    pub fn audience_column<'a>(&'a self, configured: &'a [String]) -> Option<&'a str> {
        let aud = self.aud.as_deref()?;
        if self.aud_is_list {
            if let Some(m) = configured
                .iter()
                .find(|c| aud.iter().any(|a| audience_matches(a, c)))
            {
                return Some(m);
            }
        }
        aud.first().map(String::as_str)
    }

    /// A rough size in bytes, for bounding the verification cache by memory.
    pub fn approx_bytes(&self) -> usize {
        let s = |o: &Option<String>| o.as_ref().map_or(0, |s| s.len() + 24);
        let l = |o: &Option<Vec<String>>| {
            o.as_ref()
                .map_or(0, |v| 24 + v.iter().map(|s| s.len() + 24).sum::<usize>())
        };
        std::mem::size_of::<Claims>()
            + s(&self.tid)
            + s(&self.oid)
            + s(&self.sub)
            + s(&self.upn)
            + s(&self.preferred_username)
            + s(&self.unique_name)
            + s(&self.email)
            + s(&self.name)
            + s(&self.azp)
            + s(&self.appid)
            + s(&self.iss)
            + s(&self.ver)
            + s(&self.uti)
            + s(&self.jti)
            + s(&self.idtyp)
            + s(&self.idp)
            + l(&self.groups)
            + l(&self.roles)
            + l(&self.scopes)
            + l(&self.aud)
            + l(&self.amr)
    }
}

/// Envoy compares audiences ignoring one trailing `/`; Entra v1 App ID URIs arrive with or
/// without it (docs/wire-and-identity.md §4.6).
pub fn audience_matches(token_aud: &str, configured: &str) -> bool {
    token_aud.strip_suffix('/').unwrap_or(token_aud)
        == configured.strip_suffix('/').unwrap_or(configured)
}

/// A non-empty string claim (an empty string is as good as absent: NULL, never "").
fn text(v: &ClaimValue<'_>) -> Option<String> {
    match v {
        ClaimValue::Str(s) if !s.is_empty() => Some((*s).to_owned()),
        _ => None,
    }
}

/// A list claim; a lone string is read as a one-element list.
fn list(v: ClaimValue<'_>) -> Option<Vec<String>> {
    match v {
        ClaimValue::List(items) => Some(items),
        ClaimValue::Str(s) => Some(vec![s.to_owned()]),
        _ => None,
    }
}

/// A NumericDate (or a small integer claim such as `acct`), whole seconds.
fn seconds(v: &ClaimValue<'_>) -> Option<i64> {
    match v {
        // The range check keeps `as` from saturating a nonsense value into a real-looking one.
        ClaimValue::Num(n) if n.is_finite() && n.abs() < 1e15 => Some(n.trunc() as i64),
        ClaimValue::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use prost_types::{value::Kind, ListValue, Struct, Value as PValue};

    fn s(v: &str) -> PValue {
        PValue {
            kind: Some(Kind::StringValue(v.into())),
        }
    }
    fn n(v: f64) -> PValue {
        PValue {
            kind: Some(Kind::NumberValue(v)),
        }
    }
    fn l(items: &[&str]) -> PValue {
        PValue {
            kind: Some(Kind::ListValue(ListValue {
                values: items.iter().map(|i| s(i)).collect(),
            })),
        }
    }

    /// The same claims read from a Struct and from JSON give the same result.
    #[test]
    fn struct_and_json_agree() {
        let mut names = Struct::default();
        names.fields.insert("groups".into(), s("src1"));
        let mut st = Struct::default();
        for (k, v) in [
            ("tid", s("t1")),
            ("oid", s("o1")),
            ("sub", s("s1")),
            ("preferred_username", s("ada@contoso.example")),
            ("name", s("Ada")),
            ("azp", s("app1")),
            ("roles", l(&["R1", "R2"])),
            ("groups", l(&[])),
            ("scp", s("Orders.Read  Orders.Write")),
            ("iss", s("https://issuer/")),
            ("aud", l(&["a", "b"])),
            ("ver", s("2.0")),
            ("uti", s("u1")),
            ("iat", n(1772445600.0)),
            ("exp", n(1772450400.0)),
            ("amr", l(&["pwd", "mfa"])),
            ("unknown", s("ignored")),
        ] {
            st.fields.insert(k.into(), v);
        }
        st.fields.insert(
            "_claim_names".into(),
            PValue {
                kind: Some(Kind::StructValue(names)),
            },
        );
        let buf = st.encode_to_vec();
        let from_struct = Claims::from_struct(StructView::new(&buf)).expect("valid struct");
        let json = br#"{"tid":"t1","oid":"o1","sub":"s1","preferred_username":"ada@contoso.example",
            "name":"Ada","azp":"app1","roles":["R1","R2"],"groups":[],"scp":"Orders.Read  Orders.Write",
            "iss":"https://issuer/","aud":["a","b"],"ver":"2.0","uti":"u1","iat":1772445600,
            "exp":1772450400,"amr":["pwd","mfa"],"unknown":"ignored",
            "_claim_names":{"groups":"src1"}}"#;
        let from_json = Claims::from_json(json).expect("valid json");
        assert_eq!(from_struct, from_json);
        let c = from_json;
        assert_eq!(
            c.scopes.as_deref(),
            Some(&["Orders.Read".to_owned(), "Orders.Write".to_owned()][..])
        );
        assert_eq!(
            c.groups.as_deref(),
            Some(&[][..]),
            "present but empty stays an empty list"
        );
        assert!(c.groups_overage);
        assert!(c.aud_is_list);
        assert_eq!(c.exp, Some(1772450400));
        assert_eq!(c.user_principal(), Some("ada@contoso.example"));
        assert_eq!(c.app_id(), Some("app1"));
        assert_eq!(c.token_id(), Some("u1"));
    }

    #[test]
    fn precedence_and_absence() {
        let c = Claims::from_json(
            br#"{"unique_name":"u@x","email":"e@x","appid":"v1app","jti":"j1","hasgroups":true,"acct":1}"#,
        )
        .expect("json");
        assert_eq!(c.user_principal(), Some("u@x"));
        assert_eq!(c.app_id(), Some("v1app"));
        assert_eq!(c.token_id(), Some("j1"));
        assert!(c.groups_overage);
        assert_eq!(c.acct, Some(1));
        assert_eq!(c.groups, None);
        assert_eq!(c.scopes, None);
        let c =
            Claims::from_json(br#"{"upn":"up@x","unique_name":"u@x","email":""}"#).expect("json");
        assert_eq!(c.user_principal(), Some("up@x"));
        assert_eq!(c.email, None, "an empty string is NULL, never \"\"");
        assert_eq!(Claims::from_json(b"[1]"), Err(ClaimsError::NotJson));
        assert_eq!(Claims::from_json(b"not json"), Err(ClaimsError::NotJson));
    }

    #[test]
    fn scp_as_list_and_audience_column() {
        let c = Claims::from_json(
            br#"{"scp":["Orders.Read","Orders.Write"],"aud":["x","api://orders/"]}"#,
        )
        .expect("json");
        assert_eq!(c.scopes.as_ref().map(Vec::len), Some(2));
        let configured = vec!["api://orders".to_owned()];
        assert_eq!(c.audience_column(&configured), Some("api://orders"));
        assert_eq!(
            c.audience_column(&[]),
            Some("x"),
            "no match: the first value"
        );
        let single = Claims::from_json(br#"{"aud":"api://orders/"}"#).expect("json");
        assert_eq!(single.audience_column(&configured), Some("api://orders/"));
        assert!(audience_matches("api://orders/", "api://orders"));
        assert!(!audience_matches("api://orders2", "api://orders"));
    }
}
