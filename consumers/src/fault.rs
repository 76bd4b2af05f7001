//! Whose fault a failed apply is: the record's (it counts towards dead-lettering the
//! record) or the database's (retried without limit: the record is fine).

/// What a Postgres error while applying a record says about the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Nothing: a lock, deadlock, serialization failure, timeout or an overloaded
    /// server. The same transaction succeeds later, so it is retried on the same
    /// connection, however often it takes.
    Transient,
    /// Nothing either, but the connection (and the partition's lock with it) is gone:
    /// the partition is given up and taken again on a new connection.
    ConnectionLost,
    /// Possibly the record: its content violates a constraint, or an error whose cause
    /// cannot be told (a trigger's exception). Counts towards dead-lettering it.
    Record,
}

/// Classifies by SQLSTATE; errors without one (I/O, pool, protocol) lost the connection.
pub fn classify(error: &sqlx::Error) -> Fault {
    let sqlx::Error::Database(database) = error else {
        return match error {
            // Decoding a row the query returned is a bug of ours or of the schema,
            // not a lost connection; the record cannot be blamed for it either, but
            // retrying it without limit would hide it, so it counts as today.
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::TypeNotFound { .. } => {
                Fault::Record
            }
            _ => Fault::ConnectionLost,
        };
    };
    let Some(code) = database.code() else { return Fault::Record };
    classify_sqlstate(&code)
}

/// [`classify`] for a SQLSTATE code.
pub fn classify_sqlstate(code: &str) -> Fault {
    match code {
        // serialization_failure, deadlock_detected, lock_not_available (lock_timeout),
        // query_canceled (statement_timeout), idle_in_transaction_session_timeout
        // (the session is gone with it, below).
        "40001" | "40P01" | "55P03" | "57014" => Fault::Transient,
        // admin_shutdown (pg_terminate_backend), crash_shutdown, cannot_connect_now,
        // idle_in_transaction_session_timeout, idle_session_timeout, and every
        // connection_exception: the server closes the session after these.
        "57P01" | "57P02" | "57P03" | "25P03" | "57P05" => Fault::ConnectionLost,
        code if code.starts_with("08") => Fault::ConnectionLost,
        // insufficient_resources (disk full, out of memory, too many connections)
        // and system errors (I/O) clear when the server recovers.
        code if code.starts_with("53") || code.starts_with("58") => Fault::Transient,
        _ => Fault::Record,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contention_timeouts_and_lost_sessions_are_not_the_records_fault() {
        for code in ["40001", "40P01", "55P03", "57014", "53100", "53300", "58030"] {
            assert_eq!(classify_sqlstate(code), Fault::Transient, "{code}");
        }
        for code in ["57P01", "57P02", "08006", "08003", "25P03"] {
            assert_eq!(classify_sqlstate(code), Fault::ConnectionLost, "{code}");
        }
    }

    #[test]
    fn constraint_violations_bad_data_and_raised_exceptions_count_towards_dead_lettering() {
        for code in ["23505", "23514", "22001", "22P02", "P0001", "42P01"] {
            assert_eq!(classify_sqlstate(code), Fault::Record, "{code}");
        }
    }

    #[test]
    fn an_io_error_lost_the_connection() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(classify(&io), Fault::ConnectionLost);
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Fault::ConnectionLost);
    }
}
