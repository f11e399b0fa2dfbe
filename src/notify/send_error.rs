//! Why a message was not sent, and why a transport could not be set up:
//! shared by the transports ([`super::transport`], [`super::smtp`]) and
//! delivery, which decides from them what to retry.

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot create the mail directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("cannot read the SMTP CA file {path}: {source}")]
    Ca { path: String, source: std::io::Error },
    #[error("SMTP TLS setup: {0}")]
    Tls(String),
    #[error("SMTP password: {0}")]
    Secret(#[from] crate::config::SecretError),
    #[error("notifications.transport is smtp but [notifications.smtp] is missing")]
    NoSmtp,
}

/// Whether an SMTP answer refuses this message (its recipient, its
/// content) for good: 550-556. Other 5xx answers (530/535 authentication,
/// 500-504 commands, Postfix's delayed "Helo command rejected") say the
/// configuration is wrong; they are retried so that fixing it delivers the
/// mail.
fn refuses_this_message(code: Option<u16>, text: &str) -> bool {
    let about_helo = text.to_ascii_lowercase().contains("helo");
    matches!(code, Some(550..=556)) && !about_helo
}

/// Why a message was not sent.
#[derive(Debug, Clone)]
pub struct SendError {
    /// The transport's (or server's) own words.
    pub text: String,
    /// A 5xx answer: sending the same message again gets the same answer,
    /// so the notice fails at once instead of being retried.
    pub permanent: bool,
    /// The server could not be reached: the rest of this run's mail would
    /// wait for the same timeout, so delivery stops claiming (what is
    /// claimed fails at once and is retried with the backoff).
    pub unreachable: bool,
}

impl SendError {
    /// An SMTP client error, permanent when the server refused the message.
    pub fn from_smtp(e: &lettre::transport::smtp::Error) -> SendError {
        let text = e.to_string();
        SendError {
            permanent: refuses_this_message(e.status().map(u16::from), &text),
            text,
            unreachable: false,
        }
    }

    /// A failure worth retrying (connection refused, a 4xx answer, …).
    pub fn transient(text: impl Into<String>) -> SendError {
        SendError {
            text: text.into(),
            permanent: false,
            unreachable: false,
        }
    }

    /// The server could not be reached (connect, TLS or greeting failed).
    pub fn unreachable(text: impl Into<String>) -> SendError {
        SendError {
            unreachable: true,
            ..SendError::transient(text)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_refusals_of_the_message_are_permanent() {
        use super::refuses_this_message as permanent;
        assert!(permanent(
            Some(550),
            "5.1.1 <a@example.com>: Recipient address rejected: User unknown"
        ));
        assert!(permanent(Some(554), "5.7.1 message content rejected"));
        assert!(!permanent(Some(535), "5.7.8 authentication failed"));
        assert!(!permanent(
            Some(504),
            "5.5.2 <vm>: Helo command rejected: need fully-qualified hostname"
        ));
        assert!(!permanent(
            Some(554),
            "5.7.1 <vm>: Helo command rejected: Host not found"
        ));
        assert!(!permanent(Some(451), "4.3.0 try again later"));
        assert!(!permanent(None, "connection refused"));
    }
}
