"""docs/audit-record.md applied to an entry a real Envoy sent: the columns a record must have,
computed in Python from the entry the test's own ALS receiver got (an independent reading of the
contract, not the collector's code)."""

from __future__ import annotations

import re
import urllib.parse

from envoy.data.accesslog.v3 import accesslog_pb2 as al
from google.protobuf.json_format import MessageToDict

from entries import FLAG_CODES

HTTP_VERSIONS = {al.HTTPAccessLogEntry.HTTP10: "HTTP/1.0", al.HTTPAccessLogEntry.HTTP11: "HTTP/1.1",
                 al.HTTPAccessLogEntry.HTTP2: "HTTP/2", al.HTTPAccessLogEntry.HTTP3: "HTTP/3"}
METHODS = {1: "GET", 2: "HEAD", 3: "POST", 4: "PUT", 5: "DELETE", 6: "CONNECT", 7: "OPTIONS",
           8: "TRACE", 9: "PATCH"}
SECRET_PARAMS = {"code", "access_token", "id_token", "refresh_token", "client_secret", "token",
                 "password", "sig", "signature", "key", "api_key", "apikey", "secret"}
JWT_REASONS = {"Jwt_is_expired": "expired", "Jwt_not_yet_valid": "not_yet_valid",
               "Jwt_verification_fails": "bad_signature",
               "Jwks_doesn't_have_key_to_match_kid_or_alg_from_Jwt": "unknown_key",
               "Audiences_in_Jwt_are_not_allowed": "wrong_audience",
               "Jwt_issuer_is_not_configured": "untrusted_issuer"}


def micros(ts) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1_000


def _str(s: str):
    return s or None


def _ip(addr) -> str | None:
    return addr.socket_address.address or None


def redact(path: str) -> str:
    if "?" not in path:
        return path
    base, query = path.split("?", 1)
    parts = []
    for part in query.split("&"):
        name = part.split("=", 1)[0]
        if urllib.parse.unquote(name).lower() in SECRET_PARAMS and "=" in part:
            part = f"{name}=REDACTED"
        parts.append(part)
    return base + "?" + "&".join(parts)


def flags(f) -> list[str]:
    out = []
    for fd in al.ResponseFlags.DESCRIPTOR.fields:
        if fd.name == "unauthorized_details":
            if f.HasField("unauthorized_details"):
                out.append("UAEX")
        elif getattr(f, fd.name):
            out.append(FLAG_CODES[fd.name])
    return out


def transport(ident, kind: str, e) -> dict:
    c = e.common_properties
    ttl = c.time_to_last_downstream_tx_byte
    host = None
    if c.HasField("upstream_remote_address"):
        sa = c.upstream_remote_address.socket_address
        host = f"{sa.address}:{sa.port_value}"
    m = re.fullmatch(r"outbound\|[^|]*\|[^|]*\|(.+)", c.upstream_cluster)
    out = {
        "start_time": micros(c.start_time),
        "duration_ms": (ttl.seconds * 1_000_000 + ttl.nanos // 1_000) / 1_000
        if c.HasField("time_to_last_downstream_tx_byte") else None,
        "entry_kind": kind,
        "log_name": ident.log_name,
        "node_id": ident.node.id,
        "mesh_cluster": ident.node.cluster,
        "route_name": _str(c.route_name),
        "upstream_cluster": _str(c.upstream_cluster),
        "upstream_host": host,
        "response_flags": flags(c.response_flags),
        "client_address": _ip(c.downstream_remote_address),
        "source_principal": None,
        "destination_principal": None,
        "destination_service": m.group(1) if m else None,
    }
    if kind == "tcp":
        out.update(protocol="tcp", method=None, path=None, scheme=None, authority=None,
                   status_code=None, request_bytes=e.connection_properties.received_bytes,
                   response_bytes=e.connection_properties.sent_bytes)
    else:
        rq, rs = e.request, e.response
        out.update(
            protocol=HTTP_VERSIONS.get(e.protocol_version),
            method=METHODS.get(rq.request_method),
            scheme=_str(rq.scheme),
            authority=_str(rq.authority),
            path=redact(rq.path) if rq.path else None,
            user_agent=_str(rq.user_agent),
            request_id=_str(rq.request_id),
            request_bytes=rq.request_body_bytes,
            status_code=rs.response_code.value if rs.HasField("response_code") else None,
            response_code_details=_str(rs.response_code_details),
            response_bytes=rs.response_body_bytes,
        )
        tp = rq.request_headers.get("traceparent", "").split("-")
        out["trace_id"] = (tp[1].lower() if len(tp) == 4 and len(tp[1]) == 32
                           and set(tp[1].lower()) <= set("0123456789abcdef")
                           and set(tp[1]) != {"0"} and tp[0] != "ff" else None)
        if out["destination_service"] is None and rq.authority:
            out["destination_service"] = rq.authority.split(":")[0]
    return out


def metadata(e) -> dict:
    return MessageToDict(e.common_properties.metadata).get("filterMetadata", {})


def identity(e, managed_identities: set[str]) -> dict:
    """Identity columns from the jwt_authn payload Envoy verified (or the reason it refused)."""
    md = metadata(e)
    payload = md.get("envoy.filters.http.jwt_authn", {}).get("payload")
    details = e.response.response_code_details if hasattr(e, "response") else ""
    rejected = re.fullmatch(r"jwt_authn_access_denied\{(.+)\}", details or "")
    if payload is None:
        status = JWT_REASONS.get(rejected.group(1), "malformed") if rejected else "absent"
        return {"identity_kind": "anonymous", "identity_source": "none", "token_status": status,
                "tenant_id": None, "object_id": None, "subject": None, "user_principal": None,
                "app_id": None, "roles": None, "scopes": None, "issuer": None,
                "groups_overage": None}
    app_only = payload.get("idtyp") == "app" or (
        "scp" not in payload and "roles" in payload and payload.get("sub") == payload.get("oid"))
    app_id = payload.get("azp") or payload.get("appid")
    if app_only:
        kind = ("managed_identity" if payload.get("oid") in managed_identities
                or app_id in managed_identities else "service_principal")
    else:
        kind = "user"
    aud = payload.get("aud")
    return {
        "identity_kind": kind,
        "identity_source": "jwt_metadata",
        "token_status": "proxy_verified",
        "tenant_id": payload.get("tid"),
        "object_id": payload.get("oid"),
        "subject": payload.get("sub"),
        "user_principal": payload.get("upn") or payload.get("preferred_username")
        or payload.get("unique_name") or payload.get("email"),
        "display_name": payload.get("name"),
        "app_id": app_id,
        "roles": payload.get("roles"),
        "scopes": payload["scp"].split(" ") if "scp" in payload else None,
        "groups": payload.get("groups"),
        "issuer": payload.get("iss"),
        "audience": aud[0] if isinstance(aud, list) else aud,
        "token_version": payload.get("ver"),
        "token_issued_at": int(payload["iat"]) * 1_000_000 if "iat" in payload else None,
        "token_expires_at": int(payload["exp"]) * 1_000_000 if "exp" in payload else None,
        "groups_overage": False,
    }


def decision(kind: str, e) -> dict:
    """The policy columns, read from the merged RBAC metadata and response_code_details."""
    if kind == "tcp":
        return {"decision": "unevaluated", "decision_engine": "none", "policy_name": None,
                "shadow_policy_name": None, "shadow_result": None}
    rbac = metadata(e).get("envoy.filters.http.rbac", {})
    details = e.response.response_code_details
    flg = flags(e.common_properties.response_flags)
    shadow_results = {k[: -len("shadow_engine_result")]: v for k, v in rbac.items()
                      if k.endswith("shadow_engine_result")}
    denied_prefixes = [p for p, v in sorted(shadow_results.items()) if v == "denied"]
    shadow = ("denied" if denied_prefixes else "allowed") if shadow_results else None

    def normalized(pid):
        m = re.fullmatch(r"ns\[(.+)\]-policy\[(.+)\]-rule\[(\d+)\]", pid or "")
        return f"{m.group(1)}/{m.group(2)}/{m.group(3)}" if m else (pid or None)

    # "The dry-run policy id that matched": a denying engine's first, else an allowing one's
    # (a dry-run ALLOW policy that matched), normalized as policy_name is.
    shadow_policy = None
    for p in denied_prefixes + sorted(shadow_results):
        shadow_policy = shadow_policy or rbac.get(p + "shadow_effective_policy_id")
    out = {"shadow_result": shadow, "shadow_policy_name": normalized(shadow_policy)}
    m = re.fullmatch(r"rbac_access_denied_matched_policy\[(.+)\]", details)
    if m:
        pid = None if m.group(1) == "none" else m.group(1)
        out.update(decision="deny", decision_engine="rbac", policy_name=normalized(pid))
    elif details.startswith("jwt_authn_access_denied"):
        out.update(decision="deny", decision_engine="jwt_authn", policy_name=None)
    elif details == "ext_authz_error":  # Envoy sets UAEX on an authorization failure too
        out.update(decision="error", decision_engine="ext_authz", policy_name=None)
    elif details == "ext_authz_denied" or "UAEX" in flg:
        out.update(decision="deny", decision_engine="ext_authz", policy_name=None)
    elif rbac.get("enforced_engine_result") == "allowed":
        out.update(decision="dry_run_deny" if shadow == "denied" else "allow",
                   decision_engine="rbac",
                   policy_name=normalized(rbac.get("enforced_effective_policy_id")))
    else:
        out.update(decision="unevaluated", decision_engine="none", policy_name=None)
    return out


def expected(ident, kind: str, e, managed_identities: set[str]) -> dict:
    out = transport(ident, kind, e)
    if kind == "http":
        out.update(identity(e, managed_identities))
    out.update(decision(kind, e))
    return out
