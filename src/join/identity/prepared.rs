//! Claims turned into the record's Identity columns once, so that a cached token costs only
//! copying these values into each record (and a proxy's claims are moved, not copied).

use bytes::Bytes;

use crate::record::{
    text, AsText, AuditRecord, NullableString, NullableStringList, StringList, TextExt,
};

use super::claims::Claims;
use super::classify::{self, BaseKind};
use super::directory::Directory;

/// Declares the columns once and generates both writers from that one list, so the moving and
/// the copying writer cannot drift apart.
macro_rules! identity_columns {
    ($($field:ident : $ty:ty),* $(,)?) => {
        /// The Identity columns that come from claims alone, named as in the record.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct IdentityColumns {
            $(pub $field: $ty,)*
        }

        impl IdentityColumns {
            /// Moves the values into the record.
            pub fn write(self, rec: &mut AuditRecord) {
                $(rec.$field = self.$field;)*
            }

            /// Copies the values into the record (a cached token's columns serve many records).
            pub fn write_cloned(&self, rec: &mut AuditRecord) {
                $(rec.$field = self.$field.clone();)*
            }
        }
    };
}

identity_columns! {
    tenant_id: Option<Bytes>,
    object_id: Option<Bytes>,
    subject: Option<Bytes>,
    user_principal: Option<Bytes>,
    display_name: Option<Bytes>,
    app_id: Option<Bytes>,
    groups: Option<StringList>,
    groups_overage: Option<bool>,
    roles: Option<StringList>,
    scopes: Option<StringList>,
    issuer: Option<Bytes>,
    audience: Option<Bytes>,
    token_version: Option<Bytes>,
    token_id: Option<Bytes>,
    token_issued_at: Option<i64>,
    token_expires_at: Option<i64>,
    auth_methods: Option<StringList>,
}

/// Claims ready for records: the columns plus what the per-record steps (time checks, the
/// directory's kind and names) still need.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub cols: IdentityColumns,
    pub base: BaseKind,
    pub xms_mirid: bool,
    /// Seconds since the epoch.
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
}

impl Prepared {
    /// Each value the record uses is copied once, by `store`; claims the record does not use
    /// are dropped without being copied. `store` is [`text::copy`] for claims used by one
    /// record, [`text::owned`] for columns a cache keeps (see there).
    pub fn new(c: Claims<'_>, audiences: &[String], store: fn(&str) -> Bytes) -> Prepared {
        let base = classify::base_kind(&c);
        let micros = |s: Option<i64>| s.and_then(|s| s.checked_mul(1_000_000));
        let audience = c.audience_column(audiences).map(store);
        let own = |v: Option<std::borrow::Cow<'_, str>>| v.map(|v| store(&v));
        let user_principal = match (c.upn, c.preferred_username, c.unique_name, c.email) {
            (Some(v), ..) | (None, Some(v), ..) | (None, None, Some(v), _) => Some(v),
            (None, None, None, v) => v,
        };
        let list = |v: Option<super::claims::List<'_>>| {
            v.map(|values| StringList {
                values: values.iter().map(|s| store(s)).collect(),
            })
        };
        Prepared {
            base,
            xms_mirid: c.xms_mirid,
            exp: c.exp,
            nbf: c.nbf,
            cols: IdentityColumns {
                tenant_id: own(c.tid),
                object_id: own(c.oid),
                subject: own(c.sub),
                user_principal: own(user_principal),
                display_name: own(c.name),
                app_id: own(c.azp.or(c.appid)),
                groups: list(c.groups),
                // A token was examined: overage is known, true or false.
                groups_overage: Some(c.groups_overage),
                roles: list(c.roles),
                scopes: list(c.scopes),
                issuer: own(c.iss),
                audience,
                token_version: own(c.ver),
                token_id: own(c.uti.or(c.jti)),
                token_issued_at: micros(c.iat),
                token_expires_at: micros(c.exp),
                auth_methods: list(c.amr),
            },
        }
    }

    pub fn approx_bytes(&self) -> usize {
        let s = |o: &Option<Bytes>| o.as_ref().map_or(0, |s| s.len() + 32);
        let l = |o: &Option<StringList>| {
            o.as_ref().map_or(0, |v| {
                24 + v.values.iter().map(|s| s.len() + 32).sum::<usize>()
            })
        };
        let c = &self.cols;
        std::mem::size_of::<Prepared>()
            + s(&c.tenant_id)
            + s(&c.object_id)
            + s(&c.subject)
            + s(&c.user_principal)
            + s(&c.display_name)
            + s(&c.app_id)
            + s(&c.issuer)
            + s(&c.audience)
            + s(&c.token_version)
            + s(&c.token_id)
            + l(&c.groups)
            + l(&c.roles)
            + l(&c.scopes)
            + l(&c.auth_methods)
    }
}

/// The columns that depend on the directory snapshot in use and on what the claims wrote:
/// `identity_kind`, `group_names`, `app_display_name`.
pub fn write_directory_columns(
    rec: &mut AuditRecord,
    base: BaseKind,
    xms_mirid: bool,
    dir: Option<&Directory>,
) {
    rec.identity_kind = classify::kind(
        base,
        rec.object_id.text(),
        rec.app_id.text(),
        xms_mirid,
        dir,
    )
    .into();
    let Some(dir) = dir else {
        rec.group_names = None;
        rec.app_display_name = None;
        return;
    };
    rec.group_names = rec.groups.as_ref().map(|g| NullableStringList {
        values: g
            .values
            .iter()
            .map(|id| NullableString {
                value: dir.group_name(id.as_text()).map(text::copy),
            })
            .collect(),
    });
    rec.app_display_name = rec
        .app_id
        .text()
        .and_then(|a| dir.app_name(a))
        .map(text::copy);
}
