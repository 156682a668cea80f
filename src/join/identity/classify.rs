//! `identity_kind` from claims, exactly as docs/audit-record.md defines it.
//!
//! - App-only tokens are service principals. A token is app-only when `idtyp` = `app`, or (when
//!   `idtyp` is absent) it carries `roles`, no `scp`, and `sub` = `oid`. An explicit `idtyp` of
//!   any other value (`user`) is taken at its word: it is the most accurate signal Entra gives
//!   (docs/wire-and-identity.md §4.4).
//! - An app-only token is a managed identity when the directory snapshot lists its `oid` or its
//!   app id, or when it carries `xms_mirid` (only ever minted for managed identities).
//! - Anything else with claims is a person: a `guest` when their home tenant differs from the
//!   token's (`acct` = 1, or an `idp` that is not the token's own tenant), else a `user`.

use crate::record::values;

use super::claims::Claims;
use super::directory::Directory;

/// What the claims alone say; the directory can still turn an app into a managed identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseKind {
    User,
    Guest,
    App,
}

pub fn base_kind(c: &Claims) -> BaseKind {
    let app_only = match c.idtyp.as_deref() {
        Some(t) => t.eq_ignore_ascii_case("app"),
        None => c.roles.is_some() && c.scopes.is_none() && c.sub.is_some() && c.sub == c.oid,
    };
    if app_only {
        BaseKind::App
    } else if c.acct == Some(1) || idp_is_foreign(c) {
        BaseKind::Guest
    } else {
        BaseKind::User
    }
}

/// The `identity_kind` value of a token's principal.
pub fn kind(
    base: BaseKind,
    oid: Option<&str>,
    app_id: Option<&str>,
    xms_mirid: bool,
    dir: Option<&Directory>,
) -> &'static str {
    match base {
        BaseKind::User => values::KIND_USER,
        BaseKind::Guest => values::KIND_GUEST,
        BaseKind::App => {
            let listed = dir.is_some_and(|d| {
                oid.is_some_and(|o| d.is_managed_identity(o))
                    || app_id.is_some_and(|a| d.is_managed_identity(a))
            });
            if listed || xms_mirid {
                values::KIND_MANAGED_IDENTITY
            } else {
                values::KIND_SERVICE_PRINCIPAL
            }
        }
    }
}

/// `idp` names another identity provider than the token's own tenant. Compared by tenant id
/// rather than by string: a member's `idp` may be the v1 form of a v2 token's own issuer.
fn idp_is_foreign(c: &Claims) -> bool {
    let Some(idp) = c.idp.as_deref() else {
        return false;
    };
    if c.iss.as_deref() == Some(idp) {
        return false;
    }
    let own = c
        .tid
        .as_deref()
        .or_else(|| c.iss.as_deref().and_then(tenant_of_issuer));
    match (tenant_of_issuer(idp), own) {
        (Some(home), Some(own)) => !home.eq_ignore_ascii_case(own),
        // `live.com`, `google.com`, or an issuer we cannot read: another provider.
        _ => true,
    }
}

/// The tenant segment of an Entra issuer URL (`https://sts.windows.net/{tid}/`,
/// `https://login.microsoftonline.com/{tid}/v2.0`).
pub fn tenant_of_issuer(iss: &str) -> Option<&str> {
    let rest = iss
        .strip_prefix("https://sts.windows.net/")
        .or_else(|| iss.strip_prefix("https://login.microsoftonline.com/"))?;
    let tid = rest.split('/').next()?;
    (!tid.is_empty()).then_some(tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims<'static> {
        Claims::from_json(json.as_bytes()).expect("test claims are JSON")
    }

    #[test]
    fn table() {
        let dir = Directory::from_json(br#"{"managed_identities":["mi-oid","mi-app"]}"#)
            .expect("directory");
        let tid = "11111111-2222-3333-4444-555555555555";
        let cases: &[(&str, &str, Option<&Directory>)] = &[
            // delegated user token (scp)
            (
                r#"{"scp":"a","oid":"o","sub":"s"}"#,
                values::KIND_USER,
                None,
            ),
            // roles but also scp: a user holding app roles
            (
                r#"{"scp":"a","roles":["R"],"oid":"o","sub":"o"}"#,
                values::KIND_USER,
                None,
            ),
            // idtyp=app wins even without roles
            (
                r#"{"idtyp":"app","oid":"o","sub":"x"}"#,
                values::KIND_SERVICE_PRINCIPAL,
                None,
            ),
            // roles, no scp, sub = oid
            (
                r#"{"roles":["R"],"oid":"o","sub":"o"}"#,
                values::KIND_SERVICE_PRINCIPAL,
                None,
            ),
            // roles, no scp, but sub != oid: not app-only by the contract
            (
                r#"{"roles":["R"],"oid":"o","sub":"s"}"#,
                values::KIND_USER,
                None,
            ),
            // an explicit idtyp=user is believed
            (
                r#"{"idtyp":"user","roles":["R"],"oid":"o","sub":"o"}"#,
                values::KIND_USER,
                None,
            ),
            // managed identity via the directory, by oid or by app id
            (
                r#"{"idtyp":"app","oid":"mi-oid","sub":"mi-oid"}"#,
                values::KIND_MANAGED_IDENTITY,
                Some(&dir),
            ),
            (
                r#"{"roles":["R"],"oid":"o","sub":"o","appid":"mi-app"}"#,
                values::KIND_MANAGED_IDENTITY,
                Some(&dir),
            ),
            // listed, but a user token: the list is only about app-only tokens
            (
                r#"{"scp":"a","oid":"mi-oid","sub":"s"}"#,
                values::KIND_USER,
                Some(&dir),
            ),
            // xms_mirid alone
            (
                r#"{"idtyp":"app","oid":"o","xms_mirid":"/subscriptions/x"}"#,
                values::KIND_MANAGED_IDENTITY,
                None,
            ),
            // guests: acct=1, or idp of another tenant / provider
            (r#"{"scp":"a","acct":1}"#, values::KIND_GUEST, None),
            (
                r#"{"scp":"a","idp":"live.com","iss":"https://sts.windows.net/t/"}"#,
                values::KIND_GUEST,
                None,
            ),
            (
                r#"{"scp":"a","tid":"11111111-2222-3333-4444-555555555555","idp":"https://sts.windows.net/99999999-2222-3333-4444-555555555555/","iss":"https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"}"#,
                values::KIND_GUEST,
                None,
            ),
            // idp naming the token's own tenant in the other issuer form: a member
            (
                r#"{"scp":"a","tid":"11111111-2222-3333-4444-555555555555","idp":"https://sts.windows.net/11111111-2222-3333-4444-555555555555/","iss":"https://login.microsoftonline.com/11111111-2222-3333-4444-555555555555/v2.0"}"#,
                values::KIND_USER,
                None,
            ),
            (r#"{"scp":"a","acct":0}"#, values::KIND_USER, None),
        ];
        for (json, want, dir) in cases {
            let c = claims(json);
            assert_eq!(
                kind(
                    base_kind(&c),
                    c.oid.as_deref(),
                    c.app_id(),
                    c.xms_mirid,
                    *dir
                ),
                *want,
                "{json}"
            );
        }
        assert_eq!(
            tenant_of_issuer(&format!("https://login.microsoftonline.com/{tid}/v2.0")),
            Some(tid)
        );
        assert_eq!(tenant_of_issuer("https://example.com/"), None);
    }
}
