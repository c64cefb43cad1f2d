//! The sharded engine: glommio executors, SMTP listeners, sessions, TLS, config, metrics, admin.
