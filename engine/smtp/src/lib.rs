//! Pure ESMTP server state machine and message checks: bytes in, replies and events out, no I/O.
