//! The control plane: tenants, domains, keys, credentials, limits, audit log, snapshot push.
