//! Rows of `users` and `api_keys` as the library reads them.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use serde::Serialize;

use crate::db::schema::{api_key_events, api_keys, users};

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: Option<String>,
    pub status: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A key row. The hash is never serialized.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = api_keys)]
pub struct ApiKey {
    pub id: i64,
    pub prefix: String,
    #[serde(skip)]
    pub key_hash: String,
    pub name: String,
    pub status: String,
    pub version: i32,
    pub owner_id: i64,
    #[serde(serialize_with = "as_json_list")]
    pub scopes: String,
    #[serde(serialize_with = "as_json_list")]
    pub allowed_ips: String,
    pub expires_at: NaiveDateTime,
    pub rotated_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    pub revoked_reason: Option<String>,
    pub grace_period_ends_at: Option<NaiveDateTime>,
    pub replaced_by_id: Option<i64>,
    pub last_used_at: Option<NaiveDateTime>,
    pub usage_count: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl ApiKey {
    pub fn scope_list(&self) -> Vec<String> {
        parse_list(&self.scopes)
    }

    pub fn allowed_ip_list(&self) -> Vec<String> {
        parse_list(&self.allowed_ips)
    }
}

/// A key as listings read it: every column but the hash, which a listing
/// neither shows nor needs to fetch. Serialized as [`ApiKey`] is.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = api_keys)]
pub struct KeyListing {
    pub id: i64,
    pub prefix: String,
    pub name: String,
    pub status: String,
    pub version: i32,
    pub owner_id: i64,
    #[serde(serialize_with = "as_json_list")]
    pub scopes: String,
    #[serde(serialize_with = "as_json_list")]
    pub allowed_ips: String,
    pub expires_at: NaiveDateTime,
    pub rotated_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    pub revoked_reason: Option<String>,
    pub grace_period_ends_at: Option<NaiveDateTime>,
    pub replaced_by_id: Option<i64>,
    pub last_used_at: Option<NaiveDateTime>,
    pub usage_count: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

impl ApiKey {
    /// The scopes, or `None` when the stored value is not a JSON array of
    /// strings (verification then refuses the key: it fails closed).
    pub fn scopes_checked(&self) -> Option<Vec<String>> {
        serde_json::from_str::<Vec<String>>(&self.scopes).ok()
    }

    /// The allow-list, or `None` when the stored value is not a JSON array
    /// of addresses and CIDR ranges. An entry keywarden cannot read never
    /// widens what the key may do: the whole key is refused.
    pub fn allowed_ips_checked(&self) -> Option<Vec<String>> {
        let list = serde_json::from_str::<Vec<String>>(&self.allowed_ips).ok()?;
        list.iter()
            .all(|e| e.parse::<ipnet::IpNet>().is_ok() || e.parse::<std::net::IpAddr>().is_ok())
            .then_some(list)
    }
}

/// Lists are stored as JSON arrays of strings (readable from any language);
/// for display, anything else reads as empty. Decisions use the `_checked`
/// readers above.
pub fn parse_list(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

pub fn to_json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn as_json_list<S: serde::Serializer>(value: &str, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(parse_list(value))
}

/// An audit row as read back.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = api_key_events)]
pub struct KeyEvent {
    pub id: i64,
    pub key_id: Option<i64>,
    pub prefix: String,
    pub event: String,
    pub reason: Option<String>,
    pub actor: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub endpoint: Option<String>,
    pub created_at: NaiveDateTime,
}
