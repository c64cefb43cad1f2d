//! Policy snapshots (rkyv) pushed from the control plane, the engine-side link, AUTH cache and DKIM signing.
