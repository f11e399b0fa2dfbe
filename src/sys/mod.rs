//! System helpers the domains share: NSS lookups of users and groups,
//! file handling that never follows a symlink below a root, and the local
//! services' listening sockets ([`listen`]).
//!
//! Imports nothing from the rest of the crate: [`crate::config`] resolves
//! configured owners through [`ids`], [`crate::perms`] scans and remediates
//! through [`safe_fs`] and [`inode`], [`crate::acme`] installs through
//! [`ids`].

pub mod ids;
pub mod inode;
pub mod listen;
pub mod safe_fs;
