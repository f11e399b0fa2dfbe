//! The tables, shared by both backends. Every column uses a type both
//! PostgreSQL and SQLite store the same way; timestamps are UTC.

diesel::table! {
    job_runs (id) {
        id -> BigInt,
        run_id -> Text,
        job -> Text,
        host -> Text,
        trigger -> Text,
        started_at -> Timestamp,
        finished_at -> Nullable<Timestamp>,
        outcome -> Text,
        rows_affected -> BigInt,
        error -> Nullable<Text>,
    }
}

diesel::table! {
    job_leases (job) {
        job -> Text,
        holder -> Text,
        acquired_at -> Timestamp,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    users (id) {
        id -> BigInt,
        email -> Text,
        name -> Nullable<Text>,
        status -> Text,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    api_keys (id) {
        id -> BigInt,
        prefix -> Text,
        key_hash -> Text,
        name -> Text,
        status -> Text,
        version -> Integer,
        owner_id -> BigInt,
        scopes -> Text,
        allowed_ips -> Text,
        expires_at -> Timestamp,
        rotated_at -> Nullable<Timestamp>,
        revoked_at -> Nullable<Timestamp>,
        revoked_reason -> Nullable<Text>,
        grace_period_ends_at -> Nullable<Timestamp>,
        replaced_by_id -> Nullable<BigInt>,
        last_used_at -> Nullable<Timestamp>,
        usage_count -> BigInt,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    api_key_events (id) {
        id -> BigInt,
        key_id -> Nullable<BigInt>,
        prefix -> Text,
        event -> Text,
        reason -> Nullable<Text>,
        actor -> Text,
        ip -> Nullable<Text>,
        user_agent -> Nullable<Text>,
        endpoint -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    user_events (id) {
        id -> BigInt,
        user_id -> BigInt,
        event -> Text,
        actor -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    leak_findings (id) {
        id -> BigInt,
        key_id -> Nullable<BigInt>,
        prefix -> Text,
        path -> Text,
        line -> BigInt,
        host -> Text,
        key_status -> Text,
        action -> Text,
        found_at -> Timestamp,
    }
}

diesel::joinable!(leak_findings -> api_keys (key_id));
diesel::joinable!(api_keys -> users (owner_id));
diesel::joinable!(user_events -> users (user_id));
diesel::joinable!(api_key_events -> api_keys (key_id));
diesel::allow_tables_to_appear_in_same_query!(
    job_runs,
    job_leases,
    users,
    api_keys,
    api_key_events,
    notifications,
    user_events,
    leak_findings
);

diesel::table! {
    notifications (id) {
        id -> BigInt,
        subject_kind -> Text,
        subject_id -> Text,
        generation -> Text,
        notice_window -> Text,
        recipient -> Text,
        recipient_name -> Nullable<Text>,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        next_attempt_at -> Timestamp,
        claimed_at -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        message_id -> Nullable<Text>,
        created_at -> Timestamp,
        sent_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
        claimed_by -> Nullable<Text>,
    }
}

diesel::table! {
    permission_drift (id) {
        id -> BigInt,
        host -> Text,
        path -> Text,
        rules -> Text,
        expected -> Text,
        found_mode -> Integer,
        found_uid -> BigInt,
        found_gid -> BigInt,
        fingerprint -> Text,
        refused -> Nullable<Text>,
        detected_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    permission_events (id) {
        id -> BigInt,
        host -> Text,
        path -> Text,
        rules -> Text,
        expected -> Text,
        found_mode -> Nullable<Integer>,
        found_uid -> Nullable<BigInt>,
        found_gid -> Nullable<BigInt>,
        action -> Text,
        detail -> Nullable<Text>,
        created_at -> Timestamp,
    }
}

diesel::table! {
    certificates (id) {
        id -> BigInt,
        name -> Text,
        kind -> Text,
        source -> Text,
        domains -> Text,
        serial -> Nullable<Text>,
        issuer -> Nullable<Text>,
        not_before -> Nullable<Timestamp>,
        not_after -> Nullable<Timestamp>,
        renew_at -> Nullable<Timestamp>,
        renew_planned_at -> Nullable<Timestamp>,
        last_attempt_at -> Nullable<Timestamp>,
        last_success_at -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
        failures -> Integer,
        next_attempt_at -> Nullable<Timestamp>,
        updated_at -> Timestamp,
        deploy_serial -> Nullable<Text>,
        deploy_error -> Nullable<Text>,
        deploy_failures -> Integer,
        next_deploy_at -> Nullable<Timestamp>,
        installed_at -> Nullable<Timestamp>,
        previous_serial -> Nullable<Text>,
    }
}
