//! The claims an audit record uses, read from any of the three places they arrive in:
//! the proxy's `google.protobuf.Struct` (jwt_authn dynamic metadata), or the JSON payload of a
//! raw token or of a forwarded claims header.
//!
//! Both readers feed one [`Claims::set`], so a claim means the same thing whatever carried it.
//! Unknown claims are skipped without being copied. A claim that is absent stays `None` (NULL in
//! the record); a list claim that is present but empty is `Some(vec![])`.

use std::borrow::Cow;

use serde_json::Value as Json;
use thiserror::Error;

use crate::ingest::pbstruct::{StructError, StructView, Value};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ClaimsError {
    #[error("claims are not a JSON object")]
    NotJson,
}

/// The claims the Identity columns and the token checks need.
///
/// Text claims borrow from what carried them when they can: the proxy's Struct lives as long as
/// the entry, so a claim the record does not use (`email` when `upn` is there, `idtyp`, `idp`,
/// `jti` next to `uti`) is never copied, and one it uses is copied once, into the record. A raw
/// token's claims are decoded from JSON into owned values ([`Claims::into_owned`] is free for
/// them), then cached and shared by every record that carries the same token. List claims are
/// column values as they stand, so they are owned, built at their final size.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims<'a> {
    pub tid: Option<Cow<'a, str>>,
    pub oid: Option<Cow<'a, str>>,
    pub sub: Option<Cow<'a, str>>,
    pub upn: Option<Cow<'a, str>>,
    pub preferred_username: Option<Cow<'a, str>>,
    pub unique_name: Option<Cow<'a, str>>,
    pub email: Option<Cow<'a, str>>,
    pub name: Option<Cow<'a, str>>,
    pub azp: Option<Cow<'a, str>>,
    pub appid: Option<Cow<'a, str>>,
    pub groups: Option<List<'a>>,
    /// `_claim_names` names `groups`, or `hasgroups` is true.
    pub groups_overage: bool,
    pub roles: Option<List<'a>>,
    /// `scp`, split on spaces (or as the list Istio made of it with `spaceDelimitedClaims`).
    pub scopes: Option<List<'a>>,
    pub iss: Option<Cow<'a, str>>,
    pub aud: Option<Audience<'a>>,
    pub ver: Option<Cow<'a, str>>,
    pub uti: Option<Cow<'a, str>>,
    pub jti: Option<Cow<'a, str>>,
    /// Seconds since the epoch.
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub amr: Option<List<'a>>,
    pub idtyp: Option<Cow<'a, str>>,
    pub idp: Option<Cow<'a, str>>,
    pub acct: Option<i64>,
    pub xms_mirid: bool,
}

/// A list claim's values, borrowed from a proxy's metadata Struct (owned when read from JSON).
pub type List<'a> = Vec<Cow<'a, str>>;

/// `aud`: one string (the usual form) or a list, kept apart because the `audience` column reads
/// them differently.
#[derive(Debug, Clone, PartialEq)]
pub enum Audience<'a> {
    One(Cow<'a, str>),
    List(List<'a>),
}

/// One claim value, whichever encoding it came in.
#[derive(Debug)]
pub(crate) enum ClaimValue<'a> {
    Str(Cow<'a, str>),
    Num(f64),
    Bool(bool),
    List(List<'a>),
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

impl<'a> Claims<'a> {
    /// Reads the claims of a Struct (the jwt_authn `payload`), borrowing its strings.
    pub fn from_struct(s: StructView<'a>) -> Result<Claims<'a>, StructError> {
        let mut c = Claims::default();
        for entry in s.entries() {
            let (key, value) = entry?;
            let Some(field) = Field::of(key) else {
                continue;
            };
            let v = match value {
                Value::String(_) => value
                    .as_str()
                    .map_or(ClaimValue::Other, |s| ClaimValue::Str(Cow::Borrowed(s))),
                Value::Number(n) => ClaimValue::Num(n),
                Value::Bool(b) => ClaimValue::Bool(b),
                Value::List(l) => {
                    // Counted first, so the list is allocated once at its final size (a group
                    // list of 30 would otherwise grow four times).
                    let mut out = Vec::with_capacity(l.iter().count());
                    for item in l.iter() {
                        if let Some(s) = item?.as_str() {
                            out.push(Cow::Borrowed(s));
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

    /// Reads the claims of a JSON payload (a raw token's or a forwarded claims header's). The
    /// decoded strings are moved into the claims, not copied.
    pub fn from_json(bytes: &[u8]) -> Result<Claims<'static>, ClaimsError> {
        let map: serde_json::Map<String, Json> =
            serde_json::from_slice(bytes).map_err(|_| ClaimsError::NotJson)?;
        let mut c = Claims::default();
        for (key, value) in map {
            let Some(field) = Field::of(key.as_bytes()) else {
                continue;
            };
            let v = match value {
                Json::String(s) => ClaimValue::Str(Cow::Owned(s)),
                Json::Number(n) => n.as_f64().map_or(ClaimValue::Other, ClaimValue::Num),
                Json::Bool(b) => ClaimValue::Bool(b),
                Json::Array(items) => ClaimValue::List(
                    items
                        .into_iter()
                        .filter_map(|i| match i {
                            Json::String(s) => Some(Cow::Owned(s)),
                            _ => None,
                        })
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

    pub(crate) fn set(&mut self, field: Field, v: ClaimValue<'a>) {
        match field {
            Field::Tid => self.tid = text(v),
            Field::Oid => self.oid = text(v),
            Field::Sub => self.sub = text(v),
            Field::Upn => self.upn = text(v),
            Field::PreferredUsername => self.preferred_username = text(v),
            Field::UniqueName => self.unique_name = text(v),
            Field::Email => self.email = text(v),
            Field::Name => self.name = text(v),
            Field::Azp => self.azp = text(v),
            Field::Appid => self.appid = text(v),
            Field::Groups => self.groups = list(v),
            Field::ClaimNames => {
                if matches!(v, ClaimValue::Object { has_groups: true }) {
                    self.groups_overage = true;
                }
            }
            Field::HasGroups => {
                if matches!(&v, ClaimValue::Bool(true))
                    || matches!(&v, ClaimValue::Str(s) if s == "true")
                {
                    self.groups_overage = true;
                }
            }
            Field::Roles => self.roles = list(v),
            Field::Scp => {
                self.scopes = match v {
                    ClaimValue::Str(Cow::Borrowed(s)) => {
                        Some(s.split_whitespace().map(Cow::Borrowed).collect())
                    }
                    ClaimValue::Str(Cow::Owned(s)) => Some(
                        s.split_whitespace()
                            .map(|v| Cow::Owned(v.to_owned()))
                            .collect(),
                    ),
                    // Istio's spaceDelimitedClaims already split it; split again in case an
                    // element still holds several scopes (kept as they are when none does).
                    ClaimValue::List(items) => {
                        if items
                            .iter()
                            .all(|s| !s.is_empty() && s.split_whitespace().next() == Some(&**s))
                        {
                            Some(items)
                        } else {
                            Some(
                                items
                                    .iter()
                                    .flat_map(|s| s.split_whitespace())
                                    .map(|v| Cow::Owned(v.to_owned()))
                                    .collect(),
                            )
                        }
                    }
                    _ => None,
                }
            }
            Field::Iss => self.iss = text(v),
            Field::Aud => {
                self.aud = match v {
                    ClaimValue::Str(s) if !s.is_empty() => Some(Audience::One(s)),
                    ClaimValue::List(items) => Some(Audience::List(items)),
                    _ => None,
                }
            }
            Field::Ver => {
                self.ver = match v {
                    // A numeric `ver` (not Entra's form, but seen from other issuers) keeps the
                    // `1.0` spelling of the contract.
                    ClaimValue::Num(n) if n.is_finite() => Some(Cow::Owned(format!("{n:.1}"))),
                    v => text(v),
                }
            }
            Field::Uti => self.uti = text(v),
            Field::Jti => self.jti = text(v),
            Field::Iat => self.iat = seconds(&v),
            Field::Exp => self.exp = seconds(&v),
            Field::Nbf => self.nbf = seconds(&v),
            Field::Amr => self.amr = list(v),
            Field::Idtyp => self.idtyp = text(v),
            Field::Idp => self.idp = text(v),
            Field::Acct => self.acct = seconds(&v),
            Field::XmsMirid => self.xms_mirid = text(v).is_some(),
        }
    }

    /// The same claims, owning every value (free for claims read from JSON).
    pub fn into_owned(self) -> Claims<'static> {
        let o = |v: Option<Cow<'a, str>>| v.map(|s| Cow::Owned(s.into_owned()));
        let ol = |l: List<'a>| -> List<'static> {
            l.into_iter().map(|s| Cow::Owned(s.into_owned())).collect()
        };
        Claims {
            tid: o(self.tid),
            oid: o(self.oid),
            sub: o(self.sub),
            upn: o(self.upn),
            preferred_username: o(self.preferred_username),
            unique_name: o(self.unique_name),
            email: o(self.email),
            name: o(self.name),
            azp: o(self.azp),
            appid: o(self.appid),
            groups: self.groups.map(ol),
            groups_overage: self.groups_overage,
            roles: self.roles.map(ol),
            scopes: self.scopes.map(ol),
            iss: o(self.iss),
            aud: self.aud.map(|a| match a {
                Audience::One(s) => Audience::One(Cow::Owned(s.into_owned())),
                Audience::List(l) => Audience::List(ol(l)),
            }),
            ver: o(self.ver),
            uti: o(self.uti),
            jti: o(self.jti),
            iat: self.iat,
            exp: self.exp,
            nbf: self.nbf,
            amr: self.amr.map(ol),
            idtyp: o(self.idtyp),
            idp: o(self.idp),
            acct: self.acct,
            xms_mirid: self.xms_mirid,
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

    /// Whether `aud` was a list.
    pub fn aud_is_list(&self) -> bool {
        matches!(self.aud, Some(Audience::List(_)))
    }

    /// Every `aud` value, in order.
    pub fn audiences(&self) -> impl Iterator<Item = &str> {
        let (one, list) = match &self.aud {
            Some(Audience::One(s)) => (Some(&**s), &[][..]),
            Some(Audience::List(l)) => (None, &l[..]),
            None => (None, &[][..]),
        };
        one.into_iter().chain(list.iter().map(|s| &**s))
    }

    /// The `audience` column: the configured audience that matched when `aud` is a list, else
    /// the first value.
    pub fn audience_column<'s>(&'s self, configured: &'s [String]) -> Option<&'s str> {
        match self.aud.as_ref()? {
            Audience::One(s) => Some(s),
            Audience::List(aud) => configured
                .iter()
                .find(|c| aud.iter().any(|a| audience_matches(a, c)))
                .map(String::as_str)
                .or(aud.first().map(|s| &**s)),
        }
    }

    /// A rough size in bytes, for bounding the verification cache by memory.
    pub fn approx_bytes(&self) -> usize {
        let s = |o: &Option<Cow<'_, str>>| o.as_ref().map_or(0, |s| s.len() + 24);
        let l = |o: &Option<List<'_>>| {
            o.as_ref()
                .map_or(0, |v| 24 + v.iter().map(|s| s.len() + 24).sum::<usize>())
        };
        let aud = match &self.aud {
            Some(Audience::One(a)) => a.len() + 24,
            Some(Audience::List(a)) => 24 + a.iter().map(|s| s.len() + 24).sum::<usize>(),
            None => 0,
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
            + aud
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
fn text(v: ClaimValue<'_>) -> Option<Cow<'_, str>> {
    match v {
        ClaimValue::Str(s) if !s.is_empty() => Some(s),
        _ => None,
    }
}

/// A list claim; a lone string is read as a one-element list.
fn list(v: ClaimValue<'_>) -> Option<List<'_>> {
    match v {
        ClaimValue::List(items) => Some(items),
        ClaimValue::Str(s) => Some(vec![s]),
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
            Some(&[Cow::Borrowed("Orders.Read"), Cow::Borrowed("Orders.Write")][..])
        );
        assert_eq!(
            c.groups.as_deref(),
            Some(&[][..]),
            "present but empty stays an empty list"
        );
        assert!(c.groups_overage);
        assert!(c.aud_is_list());
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
