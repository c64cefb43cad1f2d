//! Per-destination queues, global limits, MX resolution, outbound SMTP client and DSNs.
