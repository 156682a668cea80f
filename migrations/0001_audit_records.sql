-- meshaudit schema 1: the audit_records table of docs/audit-record.md, partitioned by day.
--
-- Partitioning: RANGE on start_time, one partition per UTC day, named audit_records_pYYYYMMDD.
-- Records without a start_time (an entry that carried none: rare) go to audit_records_default;
-- retention never drops that one.
--
-- Uniqueness: a partitioned table's unique key must contain the partition key, so the key is
-- (record_id, start_time). That is as strong as record_id alone: record_id hashes the entry's
-- bytes, which contain start_time, so one record_id never comes with two start_times. The key is
-- NULLS NOT DISTINCT (PostgreSQL 15+) so that records without a start_time are also stored once;
-- they all live in the default partition, so the per-partition index covers them all.
-- Writers insert with ON CONFLICT (record_id, start_time) DO NOTHING: a replayed batch or a
-- re-sent entry never duplicates a row.

CREATE TABLE audit_records (
    record_id             text NOT NULL,
    start_time            timestamptz,
    received_at           timestamptz NOT NULL,
    duration_ms           float8,
    entry_kind            text NOT NULL,
    log_name              text,
    node_id               text,
    mesh_cluster          text,
    protocol              text,
    method                text,
    scheme                text,
    authority             text,
    path                  text,
    route_name            text,
    status_code           int,
    response_flags        text[] NOT NULL,
    response_code_details text,
    request_bytes         bigint,
    response_bytes        bigint,
    request_id            text,
    trace_id              text,
    user_agent            text,
    client_address        text,
    upstream_cluster      text,
    upstream_host         text,
    source_principal      text,
    source_namespace      text,
    source_workload       text,
    destination_principal text,
    destination_namespace text,
    destination_service   text,
    identity_kind         text NOT NULL,
    identity_source       text NOT NULL,
    token_status          text NOT NULL,
    tenant_id             text,
    object_id             text,
    subject               text,
    user_principal        text,
    display_name          text,
    app_id                text,
    app_display_name      text,
    groups                text[],
    group_names           text[],
    groups_overage        bool,
    roles                 text[],
    scopes                text[],
    issuer                text,
    audience              text,
    token_version         text,
    token_id              text,
    token_issued_at       timestamptz,
    token_expires_at      timestamptz,
    auth_methods          text[],
    decision              text NOT NULL,
    decision_engine       text NOT NULL,
    policy_name           text,
    shadow_policy_name    text,
    shadow_result         text,
    CONSTRAINT audit_records_record_id_key UNIQUE NULLS NOT DISTINCT (record_id, start_time)
) PARTITION BY RANGE (start_time);

CREATE TABLE audit_records_default PARTITION OF audit_records DEFAULT;

-- The compliance questions: what did this identity do (users by object id or UPN, workloads by
-- SPIFFE principal), what was denied, who reached this destination; always within a time range.
CREATE INDEX audit_records_object_id_time ON audit_records (object_id, start_time);
CREATE INDEX audit_records_user_principal_time ON audit_records (user_principal, start_time);
CREATE INDEX audit_records_source_principal_time ON audit_records (source_principal, start_time);
CREATE INDEX audit_records_decision_time ON audit_records (decision, start_time);
CREATE INDEX audit_records_destination_time
    ON audit_records (destination_namespace, destination_service, start_time);

-- Creates the partition of one UTC day if it is missing. Safe to race: a concurrent creator
-- wins and this call does nothing. SECURITY DEFINER so that the writer role needs only INSERT
-- on audit_records, not ownership of it.
CREATE FUNCTION meshaudit_ensure_partition(day date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    name text := 'audit_records_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF to_regclass(quote_ident(name)) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE TABLE IF NOT EXISTS %I PARTITION OF audit_records FOR VALUES FROM (%L) TO (%L)',
        name, day::text || ' 00:00:00+00', (day + 1)::text || ' 00:00:00+00');
EXCEPTION
    WHEN duplicate_table OR unique_violation THEN
        RETURN;
END
$$;

-- Creates the partitions of the days from first to last (inclusive).
CREATE FUNCTION meshaudit_ensure_partitions(first date, last date) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    d date := first;
BEGIN
    WHILE d <= last LOOP
        PERFORM meshaudit_ensure_partition(d);
        d := d + 1;
    END LOOP;
END
$$;

-- Retention: drops every day partition that ends on or before `cutoff` (whole partitions, no
-- row-by-row DELETE). Returns the names dropped. The default partition is never dropped.
CREATE FUNCTION meshaudit_drop_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.relname
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'audit_records'::regclass
          AND c.relname ~ '^audit_records_p[0-9]{8}$'
          AND to_date(substr(c.relname, 16), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE IF EXISTS %I', r.relname);
        RETURN NEXT r.relname;
    END LOOP;
END
$$;
