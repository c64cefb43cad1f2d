//! MX resolution and the outbound SMTP client.
