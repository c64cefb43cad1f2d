pub mod dns_server;
pub mod smtp_server;
