//! Poison rows: a record Postgres refuses for a data reason never holds back the records behind
//! it.
//!
//! A batch is one transaction, so one refused row fails all of it. When the failure is a data
//! error ([`is_data_sqlstate`]: SQLSTATE class 22 data exception, class 23 integrity constraint,
//! 54000 a value too large for an index), retrying the same batch can never succeed: the batch
//! is split in halves, each half written (or split again) until the rows at fault stand alone.
//! Each is kept in `audit_rejects` (migrations/0004) with the database's SQLSTATE and message and
//! the whole record as protobuf, counted in `meshaudit_postgres_rows_rejected_total`, and logged
//! once per SQLSTATE (record_id, SQLSTATE and message only). Every other row is written as usual.
//!
//! Any other failure during the split (the server going away, a missing grant) returns the
//! error and the pipeline retries the whole batch from its spool position: the halves already
//! committed insert nothing twice (ON CONFLICT DO NOTHING), and neither do the rejects (one row
//! per record_id). A batch with k poison rows among n costs about 2·k·log2(n) extra statements.

use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, OnceLock};

use prost::Message;
use tracing::{debug, error};

use super::{classify, PgError, PostgresSink, Written};
use crate::record::{AsText, AuditRecord};
use crate::store::spool::Frame;

const INSERT_REJECT: &str = "INSERT INTO audit_rejects \
     (record_id, start_time_us, sqlstate, message, record) VALUES ($1, $2, $3, $4, $5) \
     ON CONFLICT (record_id) DO NOTHING";

/// True for SQLSTATEs that say the rows are at fault, not the connection or the server.
pub fn is_data_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23") || code == "54000"
}

/// Steps whose data errors are not the rows' fault: the batch's digest (a stale chain head
/// gives a unique violation there, fixed by reading the head again on the retry).
const NOT_THE_ROWS: &[&str] = &[
    "inserting the batch digest",
    "reading the digest chain head",
];

impl PgError {
    /// A data error caused by the rows written (the COPY, the INSERT from staging, their
    /// partitions, the COMMIT), which a retry of the same rows cannot fix.
    pub fn is_poison(&self) -> bool {
        matches!(self, PgError::Data { context, .. } if !NOT_THE_ROWS.contains(context))
    }
}

/// What a batch did, rejected rows included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    pub written: Written,
    /// Rows newly kept in `audit_rejects`.
    pub rejected: u64,
}

impl Outcome {
    fn add(&mut self, w: Written) {
        self.written.inserted += w.inserted;
        self.written.duplicates += w.duplicates;
    }
}

/// SQLSTATEs already logged by this process.
fn logged() -> &'static Mutex<HashSet<String>> {
    static LOGGED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LOGGED.get_or_init(|| Mutex::new(HashSet::new()))
}

impl PostgresSink {
    /// [`PostgresSink::write`], isolating the rows the database refuses for a data reason.
    /// Returns an error only for failures that are not the rows' fault.
    /// The whole batch goes first with the hashes its frames share with the other sinks; only a
    /// batch the database refuses for a data reason is split (and hashed here, row by row).
    pub async fn write_or_reject(&mut self, frames: &[Arc<Frame>]) -> Result<Outcome, PgError> {
        let first = match self.write_frames(frames).await {
            Ok(w) => {
                return Ok(Outcome {
                    written: w,
                    rejected: 0,
                })
            }
            Err(e) if e.is_poison() => e,
            Err(e) => return Err(e),
        };
        let records: Vec<&AuditRecord> = frames.iter().flat_map(|f| f.records.iter()).collect();
        let mut out = Outcome::default();
        // Ranges still to write, the last pushed tried first (left halves before right ones),
        // with the data error already seen for the range when there is one.
        let mut todo = vec![(0, records.len(), Some(first))];
        while let Some((lo, hi, known)) = todo.pop() {
            let err = match known {
                Some(e) => e,
                None => match self.write(records[lo..hi].iter().copied()).await {
                    Ok(w) => {
                        out.add(w);
                        continue;
                    }
                    Err(e) if e.is_poison() => e,
                    Err(e) => return Err(e),
                },
            };
            if hi - lo <= 1 {
                if let Some(r) = records.get(lo) {
                    out.rejected += self.reject(r, &err).await?;
                }
                continue;
            }
            let mid = lo + (hi - lo) / 2;
            todo.push((mid, hi, None));
            todo.push((lo, mid, None));
        }
        Ok(out)
    }

    /// Keeps `r` in `audit_rejects`; 1 if it was not there yet.
    async fn reject(&mut self, r: &AuditRecord, err: &PgError) -> Result<u64, PgError> {
        let (sqlstate, message) = match err {
            PgError::Data {
                sqlstate, reason, ..
            } => (sqlstate.as_str(), reason.as_str()),
            _ => ("", ""),
        };
        // Text cannot hold NUL in Postgres (docs/storage.md); the protobuf keeps it as sent.
        let record_id = r.record_id.as_text().replace('\0', "\u{FFFD}");
        let message = message.replace('\0', "\u{FFFD}");
        let conn = self.conn().await?;
        let inserted = sqlx::query(INSERT_REJECT)
            .bind(&record_id)
            .bind(r.start_time)
            .bind(sqlstate)
            .bind(&message)
            .bind(r.encode_to_vec())
            .execute(conn)
            .await;
        let n = match inserted {
            Ok(done) => done.rows_affected(),
            Err(e) => {
                let e = classify(e, "keeping a refused record in audit_rejects");
                self.drop_connection_on(&e);
                return Err(e);
            }
        };
        self.metrics.postgres_rows_rejected.fetch_add(n, Relaxed);
        let first = logged()
            .lock()
            .map(|mut l| l.insert(sqlstate.to_owned()))
            .unwrap_or(true);
        if first {
            error!(
                record_id = %record_id,
                sqlstate,
                error = %message,
                "postgres refused a record for a data reason; it is kept in audit_rejects and the records around it are written (logged once per SQLSTATE; counted in meshaudit_postgres_rows_rejected_total)"
            );
        } else {
            debug!(record_id = %record_id, sqlstate, "postgres refused another record; kept in audit_rejects");
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::{is_data_sqlstate, PgError};

    #[test]
    fn a_data_error_of_the_digest_is_not_blamed_on_the_rows() {
        let data = |context| PgError::Data {
            context,
            sqlstate: "23505".into(),
            reason: "duplicate key".into(),
        };
        assert!(data("inserting from staging").is_poison());
        assert!(data("finishing COPY").is_poison());
        assert!(!data("inserting the batch digest").is_poison());
        assert!(!PgError::Query {
            context: "inserting from staging",
            reason: "connection reset".into()
        }
        .is_poison());
    }

    #[test]
    fn data_errors_are_told_from_availability_errors() {
        for data in ["22001", "22P02", "22021", "23514", "23502", "54000"] {
            assert!(is_data_sqlstate(data), "{data}");
        }
        // Connection, resources, shutdown, privileges, serialization, deadlock: retry, never reject.
        for other in [
            "08006", "53100", "57P01", "42501", "40001", "40P01", "54001", "XX000",
        ] {
            assert!(!is_data_sqlstate(other), "{other}");
        }
    }
}
