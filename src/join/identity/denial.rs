//! Tokens the proxy itself rejected: `response_code_details` =
//! `jwt_authn_access_denied{<status text, spaces → _>}` (docs/wire-and-identity.md §2.4). The
//! status texts are Envoy's `JwtVerify::getStatusString`.

use crate::record::values;

const PREFIX: &str = "jwt_authn_access_denied{";

/// The `token_status` for a jwt_authn denial, or `None` if the proxy did not deny by jwt_authn.
pub fn token_status(details: &str) -> Option<&'static str> {
    let reason = details.strip_prefix(PREFIX)?;
    let reason = reason.strip_suffix('}').unwrap_or(reason);
    Some(if reason.starts_with("Jwt_is_missing") {
        // A rule required a token and none was sent.
        values::TOKEN_ABSENT
    } else if reason.starts_with("Jwt_is_expired") {
        values::TOKEN_EXPIRED
    } else if reason.starts_with("Jwt_not_yet_valid") {
        values::TOKEN_NOT_YET_VALID
    } else if reason.starts_with("Jwt_issuer_is_not_configured") {
        values::TOKEN_UNTRUSTED_ISSUER
    } else if reason.starts_with("Audiences_in_Jwt_are_not_allowed") {
        values::TOKEN_WRONG_AUDIENCE
    } else if reason.contains("Jwks") {
        // `Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt`, `Jwks_remote_fetch_is_failed`,
        // ...: the proxy had no key to check the token with. Tested before the generic
        // verification failure because some Envoys prefix it with `Jwt_verification_fails:_`.
        values::TOKEN_UNKNOWN_KEY
    } else if reason.starts_with("Jwt_verification_fails") {
        values::TOKEN_BAD_SIGNATURE
    } else {
        // Bad format, bad base64/JSON, unsupported alg, multiple tokens, ...
        values::TOKEN_MALFORMED
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("jwt_authn_access_denied{Jwt_is_expired}", Some(values::TOKEN_EXPIRED)),
            ("jwt_authn_access_denied{Jwt_not_yet_valid}", Some(values::TOKEN_NOT_YET_VALID)),
            ("jwt_authn_access_denied{Jwt_issuer_is_not_configured}", Some(values::TOKEN_UNTRUSTED_ISSUER)),
            ("jwt_authn_access_denied{Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt}", Some(values::TOKEN_UNKNOWN_KEY)),
            ("jwt_authn_access_denied{Jwt_verification_fails:_Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt}", Some(values::TOKEN_UNKNOWN_KEY)),
            ("jwt_authn_access_denied{Jwks_remote_fetch_is_failed}", Some(values::TOKEN_UNKNOWN_KEY)),
            ("jwt_authn_access_denied{Jwt_verification_fails}", Some(values::TOKEN_BAD_SIGNATURE)),
            ("jwt_authn_access_denied{Audiences_in_Jwt_are_not_allowed}", Some(values::TOKEN_WRONG_AUDIENCE)),
            ("jwt_authn_access_denied{Jwt_is_missing}", Some(values::TOKEN_ABSENT)),
            ("jwt_authn_access_denied{Jwt_header_[alg]_is_not_supported}", Some(values::TOKEN_MALFORMED)),
            ("jwt_authn_access_denied{Jwt_is_not_in_the_form_of_Header.Payload.Signature_with_two_dots_and_3_sections}", Some(values::TOKEN_MALFORMED)),
            ("rbac_access_denied_matched_policy[none]", None),
            ("via_upstream", None),
            ("", None),
        ];
        for (details, want) in cases {
            assert_eq!(token_status(details), want, "{details}");
        }
    }
}
