//! Owners of keys. Emails are unique regardless of case.

use diesel::prelude::*;

use super::error::KeyError;
use super::model::User;
use crate::db::schema::{user_events, users};
use crate::db::DbConnection;

diesel::define_sql_function! {
    /// SQL `lower()`, the same on both backends for ASCII.
    fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// Trims and checks an email address (a light check: the mail server has
/// the last word).
pub fn normalize_email(email: &str) -> Result<String, KeyError> {
    let e = email.trim();
    let valid = (3..=254).contains(&e.len())
        && !e
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>' || c == ',' || c == ';')
        && e.split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty() && !domain.contains('@'));
    if valid {
        Ok(e.to_string())
    } else {
        Err(KeyError::InvalidEmail(email.chars().take(80).collect()))
    }
}

pub fn add(conn: &mut DbConnection, email: &str, name: Option<&str>) -> Result<User, KeyError> {
    let email = normalize_email(email)?;
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    if name.is_some_and(|n| n.chars().count() > 200 || n.chars().any(char::is_control)) {
        return Err(KeyError::InvalidName);
    }
    if find_by_email(conn, &email)?.is_some() {
        return Err(KeyError::DuplicateEmail(email));
    }
    let now = crate::db::now();
    let inserted = diesel::insert_into(users::table)
        .values((
            users::email.eq(&email),
            users::name.eq(name),
            users::status.eq("active"),
            users::created_at.eq(now),
            users::updated_at.eq(now),
        ))
        .execute(conn);
    match inserted {
        Ok(_) => {}
        Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
            return Err(KeyError::DuplicateEmail(email))
        }
        Err(e) => return Err(e.into()),
    }
    find_by_email(conn, &email)?.ok_or(KeyError::UnknownOwner(email))
}

pub fn find_by_email(conn: &mut DbConnection, email: &str) -> Result<Option<User>, KeyError> {
    Ok(users::table
        .filter(lower(users::email).eq(email.trim().to_lowercase()))
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

pub fn find_by_id(conn: &mut DbConnection, id: i64) -> Result<Option<User>, KeyError> {
    Ok(users::table.find(id).select(User::as_select()).first(conn).optional()?)
}

pub fn list(conn: &mut DbConnection) -> Result<Vec<User>, KeyError> {
    Ok(users::table.order(users::email).select(User::as_select()).load(conn)?)
}

/// Disables (`active = false`) or enables an owner, with a `user_events`
/// row naming `actor`, in one transaction. A disabled owner's keys no longer
/// verify and get no warnings. Returns the owner and whether anything
/// changed (asking for the status it already has changes nothing).
pub fn set_active(conn: &mut DbConnection, email: &str, active: bool, actor: &str) -> Result<(User, bool), KeyError> {
    let email = normalize_email(email)?;
    let (to, event) = if active {
        ("active", "enabled")
    } else {
        ("disabled", "disabled")
    };
    conn.write_transaction(|conn| {
        let user = find_by_email(conn, &email)?.ok_or_else(|| KeyError::UnknownOwner(email.clone()))?;
        if user.status == to {
            return Ok((user, false));
        }
        let now = crate::db::now();
        diesel::update(users::table.find(user.id))
            .set((users::status.eq(to), users::updated_at.eq(now)))
            .execute(conn)?;
        diesel::insert_into(user_events::table)
            .values((
                user_events::user_id.eq(user.id),
                user_events::event.eq(event),
                user_events::actor.eq(actor),
                user_events::created_at.eq(now),
            ))
            .execute(conn)?;
        let user = find_by_id(conn, user.id)?.ok_or_else(|| KeyError::UnknownOwner(email.clone()))?;
        Ok((user, true))
    })
}
