//! Arrow schema and record batches derived from [`COLUMNS`]: what Parquet files (and the report
//! engine) see. Types follow docs/audit-record.md exactly: text → Utf8, int → Int32,
//! bigint → Int64, float8 → Float64, bool → Boolean, timestamptz → Timestamp(µs, "UTC"),
//! text[] → List<Utf8>.

use std::sync::{Arc, OnceLock};

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};

use super::text::as_str;
use super::{AuditRecord, Column, ColumnType, Getter, NullableString, COLUMNS};

fn data_type(t: ColumnType) -> DataType {
    match t {
        ColumnType::Text => DataType::Utf8,
        ColumnType::Int => DataType::Int32,
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Float8 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Timestamptz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::TextArray => DataType::List(Arc::new(list_item_field())),
    }
}

fn list_item_field() -> Field {
    Field::new("item", DataType::Utf8, true)
}

/// The Arrow schema of an audit record batch (built once).
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields: Vec<Field> = COLUMNS
                .iter()
                .map(|c| Field::new(c.name, data_type(c.column_type()), c.nullable))
                .collect();
            Arc::new(Schema::new(fields))
        })
        .clone()
}

/// Encodes records column by column into one Arrow batch.
pub fn to_record_batch(records: &[AuditRecord]) -> Result<RecordBatch, ArrowError> {
    let refs: Vec<&AuditRecord> = records.iter().collect();
    to_record_batch_refs(&refs)
}

/// Like [`to_record_batch`], for records that live in shared buffers (the spool's frames), so
/// that a sink need not clone them.
pub fn to_record_batch_refs(records: &[&AuditRecord]) -> Result<RecordBatch, ArrowError> {
    let columns = COLUMNS
        .iter()
        .map(|c| build_column(c, records))
        .collect::<Result<Vec<ArrayRef>, ArrowError>>()?;
    RecordBatch::try_new(schema(), columns)
}

fn build_column(col: &Column, records: &[&AuditRecord]) -> Result<ArrayRef, ArrowError> {
    let n = records.len();
    Ok(match col.get {
        Getter::Text(get) => {
            // Sized exactly up front: growing the value buffer re-copies every string so far.
            let bytes = records.iter().map(|r| get(r).map_or(0, <[u8]>::len)).sum();
            // Built as bytes and checked as UTF-8 once for the whole column (a check per value
            // cost more than the copy); text is UTF-8 by `record::text`'s invariant, so the
            // check fails only on a bug, and then as an error, never as a wrong file.
            let mut b = BinaryBuilder::with_capacity(n, bytes);
            records.iter().for_each(|r| b.append_option(get(r)));
            Arc::new(StringArray::try_from_binary(b.finish())?)
        }
        Getter::Int(get) => {
            let mut b = Int32Builder::with_capacity(n);
            records.iter().for_each(|r| b.append_option(get(r)));
            Arc::new(b.finish())
        }
        Getter::BigInt(get) => {
            let mut b = Int64Builder::with_capacity(n);
            records.iter().for_each(|r| b.append_option(get(r)));
            Arc::new(b.finish())
        }
        Getter::Float8(get) => {
            let mut b = Float64Builder::with_capacity(n);
            records.iter().for_each(|r| b.append_option(get(r)));
            Arc::new(b.finish())
        }
        Getter::Bool(get) => {
            let mut b = BooleanBuilder::with_capacity(n);
            records.iter().for_each(|r| b.append_option(get(r)));
            Arc::new(b.finish())
        }
        Getter::Timestamptz(get) => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
            records.iter().for_each(|r| b.append_option(get(r)));
            Arc::new(b.finish())
        }
        Getter::TextArray(get) => {
            let (items, bytes) = records
                .iter()
                .filter_map(|r| get(r))
                .fold((0, 0), |(i, b), v| {
                    (i + v.len(), b + v.iter().map(|s| s.len()).sum::<usize>())
                });
            let mut b = ListBuilder::with_capacity(StringBuilder::with_capacity(items, bytes), n)
                .with_field(list_item_field());
            for r in records {
                match get(r) {
                    Some(values) => {
                        values
                            .iter()
                            .for_each(|v| b.values().append_value(as_str(v)));
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            Arc::new(b.finish())
        }
        Getter::NullableTextArray(get) => {
            let (items, bytes) = records
                .iter()
                .filter_map(|r| get(r))
                .fold((0, 0), |(i, b), v| {
                    let len = |s: &NullableString| s.value.as_ref().map_or(0, |v| v.len());
                    (i + v.len(), b + v.iter().map(len).sum::<usize>())
                });
            let mut b = ListBuilder::with_capacity(StringBuilder::with_capacity(items, bytes), n)
                .with_field(list_item_field());
            for r in records {
                match get(r) {
                    Some(values) => {
                        values
                            .iter()
                            .for_each(|v| b.values().append_option(v.value.as_deref().map(as_str)));
                        b.append(true);
                    }
                    None => b.append(false),
                }
            }
            Arc::new(b.finish())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{string_list, NullableString, NullableStringList};
    use arrow_array::{Array, ListArray, StringArray};

    #[test]
    fn batch_keeps_null_and_empty_lists_apart() {
        let mut a = AuditRecord {
            record_id: "a".into(),
            ..Default::default()
        };
        a.groups = Some(string_list(Vec::<String>::new()));
        a.group_names = Some(NullableStringList {
            values: vec![
                NullableString { value: None },
                NullableString {
                    value: Some("x".into()),
                },
            ],
        });
        let b = AuditRecord {
            record_id: "b".into(),
            ..Default::default()
        };
        let batch = to_record_batch(&[a, b]).expect("valid batch");
        assert_eq!(batch.num_rows(), 2);
        let groups = batch.column_by_name("groups").expect("groups");
        let groups = groups.as_any().downcast_ref::<ListArray>().expect("list");
        assert!(groups.is_valid(0) && groups.value(0).is_empty());
        assert!(groups.is_null(1));
        let names = batch.column_by_name("group_names").expect("group_names");
        let names = names.as_any().downcast_ref::<ListArray>().expect("list");
        let first = names.value(0);
        let first = first.as_any().downcast_ref::<StringArray>().expect("utf8");
        assert!(first.is_null(0));
        assert_eq!(first.value(1), "x");
        // response_flags is never NULL, even for a record that did not set it.
        let flags = batch.column_by_name("response_flags").expect("flags");
        assert_eq!(flags.null_count(), 0);
    }
}
