//! An incremental run's change set as snapshot rows: the source's columns
//! (all nullable) plus [`DELETED_COLUMN`]. Upserted rows are whole source
//! rows marked false; deleted keys set only the key columns, marked true.
//! One writer, one manifest, so listing, verifying and pruning treat a
//! change set as any snapshot.

use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, BooleanArray, RecordBatch};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;

use super::manifest::DELETED_COLUMN;

/// The change set's schema for a source with `source`'s columns.
pub fn schema(source: &Schema) -> SchemaRef {
    let fields = source
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_nullable(true))
        .chain(std::iter::once(Field::new(
            DELETED_COLUMN,
            DataType::Boolean,
            false,
        )));
    Arc::new(Schema::new(fields.collect::<Vec<_>>()))
}

/// `n` copies of `value` as a bitmap (no per-row allocation).
fn flags(n: usize, value: bool) -> BooleanArray {
    let bits = match value {
        true => BooleanBuffer::new_set(n),
        false => BooleanBuffer::new_unset(n),
    };
    BooleanArray::new(bits, None)
}

/// Upserted source rows as change-set rows.
pub fn upserted(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(flags(batch.num_rows(), false)));
    RecordBatch::try_new(Arc::clone(schema), columns)
}

/// Deleted keys (key columns by their source names) as change-set rows.
pub fn deleted(keys: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
    let n = keys.num_rows();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for field in &schema.fields()[..schema.fields().len() - 1] {
        columns.push(match keys.column_by_name(field.name()) {
            Some(c) if c.data_type() == field.data_type() => Arc::clone(c),
            Some(c) => arrow::compute::cast(c, field.data_type())?,
            None => new_null_array(field.data_type(), n),
        });
    }
    columns.push(Arc::new(flags(n, true)));
    RecordBatch::try_new(Arc::clone(schema), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array, StringArray};

    #[test]
    fn upserts_and_deleted_keys_share_one_schema_told_apart_by_the_flag() {
        let source = Schema::new(vec![
            Field::new("ID", DataType::Int64, false),
            Field::new("NAME", DataType::Utf8, false),
        ]);
        let s = schema(&source);
        assert!(s.fields()[..2].iter().all(|f| f.is_nullable()));
        let rows = RecordBatch::try_new(
            Arc::new(source),
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(StringArray::from(vec!["a", "b"])),
            ],
        )
        .unwrap();
        let up = upserted(&rows, &s).unwrap();
        assert_eq!(up.column(2).as_boolean().true_count(), 0);
        let keys = RecordBatch::try_from_iter(vec![(
            "ID",
            Arc::new(Int64Array::from(vec![7])) as ArrayRef,
        )])
        .unwrap();
        let del = deleted(&keys, &s).unwrap();
        assert_eq!(
            del.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0),
            7
        );
        assert!(del.column(1).is_null(0));
        assert!(del.column(2).as_boolean().value(0));
    }
}
