//! Encoding a [`QueryOutput`] for the wire: JSON rows or an Arrow IPC stream.
//!
//! The JSON format is described on [`QueryOutput::to_json`].
//!
//! The encoder works column-wise: one typed writer per column and batch, downcast once,
//! then rows are written straight into the output buffer.

use std::io::{self, Write};

use datafusion::arrow::array::{
    AnyDictionaryArray, Array, ArrowPrimitiveType, AsArray, BooleanArray, GenericStringArray,
    OffsetSizeTrait, PrimitiveArray, StringViewArray,
};
use datafusion::arrow::datatypes::{
    DataType, Float16Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use super::{QueryError, QueryOutput};

/// Media type of an Arrow IPC stream.
pub const ARROW_STREAM_MEDIA_TYPE: &str = "application/vnd.apache.arrow.stream";

impl QueryOutput {
    /// The JSON body:
    ///
    /// ```json
    /// {"columns": [{"name": "node", "type": "Dictionary(Int32, Utf8)"}],
    ///  "rows": [["web-1"]],
    ///  "truncated": false}
    /// ```
    ///
    /// `type` is the Arrow `DataType`'s Display text. Values:
    ///
    /// - integers are JSON integers, finite floats JSON numbers; `NaN`, `inf` and `-inf` are
    ///   the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (JSON has no such numbers, and
    ///   `null` would be mistaken for SQL NULL; JavaScript's `Number()` and Python's
    ///   `float()` read these strings back);
    /// - decimals are JSON numbers written with their exact decimal digits;
    /// - booleans are booleans, strings strings, SQL NULL is `null`;
    /// - timestamps are RFC 3339 strings in UTC with a `Z` and as many fraction digits as the
    ///   unit has (`s`: none, `ms`: 3, `us`: 6, `ns`: 9), e.g. `"2026-11-22T20:41:03.123Z"`.
    ///   A timestamp without a time zone is taken as UTC. Years outside 0000–9999 carry a sign
    ///   (ISO 8601 expanded form), e.g. `"+12000-01-01T00:00:00Z"`;
    /// - dictionary-encoded values are written as their values;
    /// - everything else (dates, times, durations, intervals, binary, lists, structs, maps)
    ///   is a string with Arrow's display text.
    pub fn to_json(&self) -> Result<Vec<u8>, QueryError> {
        self.write_json()
            .map_err(|err| QueryError::Server(format!("failed to encode JSON: {err}")))
    }

    fn write_json(&self) -> io::Result<Vec<u8>> {
        // Rough guess to avoid most regrowth: ~12 bytes per cell.
        let n_cells = self.n_rows() * self.schema.fields().len();
        let mut out = Vec::with_capacity(64 + n_cells * 12);
        out.extend_from_slice(b"{\"columns\":[");
        for (idx, field) in self.schema.fields().iter().enumerate() {
            if idx > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"name\":");
            serde_json::to_writer(&mut out, field.name())?;
            out.extend_from_slice(b",\"type\":");
            serde_json::to_writer(&mut out, &field.data_type().to_string())?;
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"rows\":[");
        let mut first_row = true;
        for batch in &self.batches {
            let writers: Vec<Box<dyn CellWriter + '_>> = batch
                .columns()
                .iter()
                .map(|column| cell_writer(column.as_ref()))
                .collect();
            for row_idx in 0..batch.num_rows() {
                if !first_row {
                    out.push(b',');
                }
                first_row = false;
                out.push(b'[');
                for (col_idx, writer) in writers.iter().enumerate() {
                    if col_idx > 0 {
                        out.push(b',');
                    }
                    writer.write(row_idx, &mut out)?;
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b"],\"truncated\":");
        out.extend_from_slice(if self.truncated { b"true" } else { b"false" });
        out.push(b'}');
        Ok(out)
    }

    /// An Arrow IPC stream: the schema message (also when there are no rows), then every
    /// batch.
    pub fn to_arrow_ipc(&self) -> Result<Vec<u8>, QueryError> {
        let encode = || {
            let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)?;
            for batch in &self.batches {
                writer.write(batch)?;
            }
            writer.into_inner()
        };
        encode().map_err(|err| QueryError::Server(format!("failed to encode Arrow IPC: {err}")))
    }
}

/// Writes the JSON value of row `idx` of one column.
trait CellWriter {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()>;
}

fn cell_writer(array: &dyn Array) -> Box<dyn CellWriter + '_> {
    match array.data_type() {
        DataType::Null => Box::new(NullWriter),
        DataType::Boolean => Box::new(BoolWriter(array.as_boolean())),
        DataType::Int8 => Box::new(IntWriter(array.as_primitive::<Int8Type>())),
        DataType::Int16 => Box::new(IntWriter(array.as_primitive::<Int16Type>())),
        DataType::Int32 => Box::new(IntWriter(array.as_primitive::<Int32Type>())),
        DataType::Int64 => Box::new(IntWriter(array.as_primitive::<Int64Type>())),
        DataType::UInt8 => Box::new(IntWriter(array.as_primitive::<UInt8Type>())),
        DataType::UInt16 => Box::new(IntWriter(array.as_primitive::<UInt16Type>())),
        DataType::UInt32 => Box::new(IntWriter(array.as_primitive::<UInt32Type>())),
        DataType::UInt64 => Box::new(IntWriter(array.as_primitive::<UInt64Type>())),
        DataType::Float16 => Box::new(Float16Writer(array.as_primitive::<Float16Type>())),
        DataType::Float32 => Box::new(Float32Writer(array.as_primitive::<Float32Type>())),
        DataType::Float64 => Box::new(Float64Writer(array.as_primitive::<Float64Type>())),
        DataType::Utf8 => Box::new(StringWriter(array.as_string::<i32>())),
        DataType::LargeUtf8 => Box::new(StringWriter(array.as_string::<i64>())),
        DataType::Utf8View => Box::new(StringViewWriter(array.as_string_view())),
        DataType::Timestamp(unit, _) => {
            let (values, per_second, n_digits) = match unit {
                TimeUnit::Second => (
                    array
                        .as_primitive::<TimestampSecondType>()
                        .reinterpret_cast(),
                    1,
                    0,
                ),
                TimeUnit::Millisecond => (
                    array
                        .as_primitive::<TimestampMillisecondType>()
                        .reinterpret_cast(),
                    1_000,
                    3,
                ),
                TimeUnit::Microsecond => (
                    array
                        .as_primitive::<TimestampMicrosecondType>()
                        .reinterpret_cast(),
                    1_000_000,
                    6,
                ),
                TimeUnit::Nanosecond => (
                    array
                        .as_primitive::<TimestampNanosecondType>()
                        .reinterpret_cast(),
                    1_000_000_000,
                    9,
                ),
            };
            Box::new(TimestampWriter {
                values,
                per_second,
                n_digits,
            })
        }
        DataType::Decimal32(..)
        | DataType::Decimal64(..)
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => fallback(array, true),
        DataType::Dictionary(..) => match array.as_any_dictionary_opt() {
            Some(dict) => match DictWriter::new(array, dict) {
                Ok(writer) => Box::new(writer),
                Err(_) => fallback(array, false),
            },
            None => fallback(array, false),
        },
        _ => fallback(array, false),
    }
}

fn fallback(array: &dyn Array, numeric: bool) -> Box<dyn CellWriter + '_> {
    match ArrayFormatter::try_new(array, &FormatOptions::default()) {
        Ok(formatter) => Box::new(DisplayWriter {
            array,
            formatter,
            numeric,
        }),
        // No display for this type: say so in every cell rather than fail the query.
        Err(_) => Box::new(UnsupportedWriter(array)),
    }
}

struct NullWriter;

impl CellWriter for NullWriter {
    fn write(&self, _idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        out.extend_from_slice(b"null");
        Ok(())
    }
}

struct BoolWriter<'a>(&'a BooleanArray);

impl CellWriter for BoolWriter<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        let text: &[u8] = if self.0.is_null(idx) {
            b"null"
        } else if self.0.value(idx) {
            b"true"
        } else {
            b"false"
        };
        out.extend_from_slice(text);
        Ok(())
    }
}

struct IntWriter<'a, T: ArrowPrimitiveType>(&'a PrimitiveArray<T>);

impl<T> CellWriter for IntWriter<'_, T>
where
    T: ArrowPrimitiveType,
    T::Native: serde::Serialize,
{
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.0.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        serde_json::to_writer(out, &self.0.value(idx)).map_err(io::Error::from)
    }
}

struct Float16Writer<'a>(&'a PrimitiveArray<Float16Type>);

impl CellWriter for Float16Writer<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.0.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        write_f32(self.0.value(idx).to_f32(), out)
    }
}

struct Float32Writer<'a>(&'a PrimitiveArray<Float32Type>);

impl CellWriter for Float32Writer<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.0.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        write_f32(self.0.value(idx), out)
    }
}

struct Float64Writer<'a>(&'a PrimitiveArray<Float64Type>);

impl CellWriter for Float64Writer<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.0.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        let value = self.0.value(idx);
        if value.is_finite() {
            serde_json::to_writer(out, &value).map_err(io::Error::from)
        } else {
            out.extend_from_slice(non_finite_json(value.is_nan(), value > 0.0));
            Ok(())
        }
    }
}

/// Written as f32 so that `0.1f32` is `0.1`, not `0.10000000149011612`.
fn write_f32(value: f32, out: &mut Vec<u8>) -> io::Result<()> {
    if value.is_finite() {
        serde_json::to_writer(out, &value).map_err(io::Error::from)
    } else {
        out.extend_from_slice(non_finite_json(value.is_nan(), value > 0.0));
        Ok(())
    }
}

fn non_finite_json(is_nan: bool, is_positive: bool) -> &'static [u8] {
    match (is_nan, is_positive) {
        (true, _) => b"\"NaN\"",
        (false, true) => b"\"Infinity\"",
        (false, false) => b"\"-Infinity\"",
    }
}

struct StringWriter<'a, O: OffsetSizeTrait>(&'a GenericStringArray<O>);

impl<O: OffsetSizeTrait> CellWriter for StringWriter<'_, O> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.0.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        serde_json::to_writer(out, self.0.value(idx)).map_err(io::Error::from)
    }
}

struct StringViewWriter<'a>(&'a StringViewArray);

impl CellWriter for StringViewWriter<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.0.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        serde_json::to_writer(out, self.0.value(idx)).map_err(io::Error::from)
    }
}

struct TimestampWriter {
    /// The raw counts of `unit`s since the Unix epoch, viewed as plain i64.
    values: PrimitiveArray<Int64Type>,
    per_second: i64,
    n_digits: usize,
}

impl CellWriter for TimestampWriter {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.values.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        let value = self.values.value(idx);
        let secs = value.div_euclid(self.per_second);
        let frac = value.rem_euclid(self.per_second);
        out.push(b'"');
        write_rfc3339(secs, frac, self.n_digits, out)?;
        out.push(b'"');
        Ok(())
    }
}

/// Writes `secs` since the Unix epoch (UTC) plus a fraction of `n_digits` digits as
/// RFC 3339, e.g. `2026-11-22T20:41:03.123Z`. Digits are written by hand: `write!` costs
/// several times more and timestamps are in nearly every result.
fn write_rfc3339(secs: i64, frac: i64, n_digits: usize, out: &mut Vec<u8>) -> io::Result<()> {
    let days = secs.div_euclid(86_400);
    let sec_of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    if (0..=9999).contains(&year) {
        push_digits(year, 4, out);
    } else {
        write!(out, "{year:+05}")?;
    }
    out.push(b'-');
    push_digits(i64::from(month), 2, out);
    out.push(b'-');
    push_digits(i64::from(day), 2, out);
    out.push(b'T');
    push_digits(sec_of_day / 3600, 2, out);
    out.push(b':');
    push_digits(sec_of_day / 60 % 60, 2, out);
    out.push(b':');
    push_digits(sec_of_day % 60, 2, out);
    if n_digits > 0 {
        out.push(b'.');
        push_digits(frac, n_digits, out);
    }
    out.push(b'Z');
    Ok(())
}

/// Appends the last `n_digits` decimal digits of `value` (>= 0), zero-padded.
fn push_digits(mut value: i64, n_digits: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.resize(start + n_digits, b'0');
    for slot in out[start..].iter_mut().rev() {
        *slot = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// Proleptic Gregorian (year, month, day) of a day count since 1970-01-01.
///
/// Howard Hinnant's `civil_from_days` (<http://howardhinnant.github.io/date_algorithms.html>),
/// exact for every i64 day count a timestamp can produce.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // March = 0
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct DictWriter<'a> {
    array: &'a dyn Array,
    /// Index into the values for every row; arbitrary (but in range) for null keys.
    keys: Vec<usize>,
    values: DictValues<'a>,
}

/// The JSON of a dictionary's values. Rendered once per batch when there are no more
/// values than rows (the usual case: a few node or metric names repeated), so each row
/// is a copy; otherwise rendered per row.
enum DictValues<'a> {
    Rendered { json: Vec<u8>, ends: Vec<usize> },
    PerRow(Box<dyn CellWriter + 'a>),
}

impl<'a> DictWriter<'a> {
    fn new(array: &'a dyn Array, dict: &'a dyn AnyDictionaryArray) -> io::Result<Self> {
        let values_array = dict.values().as_ref();
        let writer = cell_writer(values_array);
        let values = if values_array.len() <= array.len() {
            let mut json = Vec::new();
            let mut ends = Vec::with_capacity(values_array.len());
            for idx in 0..values_array.len() {
                writer.write(idx, &mut json)?;
                ends.push(json.len());
            }
            DictValues::Rendered { json, ends }
        } else {
            DictValues::PerRow(writer)
        };
        Ok(DictWriter {
            array,
            keys: dict.normalized_keys(),
            values,
        })
    }
}

impl CellWriter for DictWriter<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.array.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        let value_idx = self.keys[idx];
        match &self.values {
            DictValues::Rendered { json, ends } => {
                let start = if value_idx == 0 {
                    0
                } else {
                    ends[value_idx - 1]
                };
                out.extend_from_slice(&json[start..ends[value_idx]]);
                Ok(())
            }
            DictValues::PerRow(writer) => writer.write(value_idx, out),
        }
    }
}

struct DisplayWriter<'a> {
    array: &'a dyn Array,
    formatter: ArrayFormatter<'a>,
    /// The display text is a JSON number (decimals): write it bare when it parses as one.
    numeric: bool,
}

impl CellWriter for DisplayWriter<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.array.is_null(idx) {
            out.extend_from_slice(b"null");
            return Ok(());
        }
        match self.formatter.value(idx).try_to_string() {
            Ok(text) if self.numeric && is_json_number(&text) => {
                out.extend_from_slice(text.as_bytes());
                Ok(())
            }
            Ok(text) => serde_json::to_writer(out, &text).map_err(io::Error::from),
            Err(err) => serde_json::to_writer(out, &format!("<{err}>")).map_err(io::Error::from),
        }
    }
}

struct UnsupportedWriter<'a>(&'a dyn Array);

impl CellWriter for UnsupportedWriter<'_> {
    fn write(&self, idx: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if self.0.is_null(idx) {
            out.extend_from_slice(b"null");
        } else {
            out.extend_from_slice(b"\"<unsupported type>\"");
        }
        Ok(())
    }
}

/// JSON's number grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn is_json_number(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut idx = usize::from(bytes.first() == Some(&b'-'));
    let n_int_digits = count_digits(&bytes[idx..]);
    if n_int_digits == 0 || (n_int_digits > 1 && bytes[idx] == b'0') {
        return false;
    }
    idx += n_int_digits;
    if bytes.get(idx) == Some(&b'.') {
        let n_frac_digits = count_digits(&bytes[idx + 1..]);
        if n_frac_digits == 0 {
            return false;
        }
        idx += 1 + n_frac_digits;
    }
    if matches!(bytes.get(idx), Some(b'e' | b'E')) {
        idx += 1;
        if matches!(bytes.get(idx), Some(b'+' | b'-')) {
            idx += 1;
        }
        let n_exp_digits = count_digits(&bytes[idx..]);
        if n_exp_digits == 0 {
            return false;
        }
        idx += n_exp_digits;
    }
    idx == bytes.len()
}

fn count_digits(bytes: &[u8]) -> usize {
    bytes.iter().take_while(|b| b.is_ascii_digit()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rfc3339(secs: i64, frac: i64, n_digits: usize) -> String {
        let mut out = Vec::new();
        write_rfc3339(secs, frac, n_digits, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0, 0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_380_063, 123, 3), "2026-11-22T20:41:03.123Z");
        assert_eq!(rfc3339(-1, 999_999, 6), "1969-12-31T23:59:59.999999Z");
        assert_eq!(rfc3339(951_782_400, 5, 9), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(rfc3339(-62_135_596_800, 0, 0), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799, 0, 0), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800, 0, 0), "+10000-01-01T00:00:00Z");
        assert_eq!(rfc3339(-62_167_219_201, 0, 0), "-0001-12-31T23:59:59Z");
    }

    /// Compares against chrono (through arrow's conversions) over a sweep of days.
    #[test]
    fn civil_from_days_matches_chrono() {
        use datafusion::arrow::temporal_conversions::timestamp_s_to_datetime;
        let mut day = -800_000_i64;
        while day < 3_000_000 {
            let secs = day * 86_400 + 45_296;
            let expected = timestamp_s_to_datetime(secs)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            assert_eq!(rfc3339(secs, 0, 0), expected, "day {day}");
            day += 997;
        }
    }

    #[test]
    fn json_number_grammar() {
        for ok in [
            "0",
            "-0",
            "12",
            "-12.50",
            "0.001",
            "1e5",
            "1.5E-3",
            "123456789012345678901",
        ] {
            assert!(is_json_number(ok), "{ok}");
        }
        for bad in ["", "-", "01", "1.", ".5", "1e", "NaN", "1,5", "+1", "12 "] {
            assert!(!is_json_number(bad), "{bad}");
        }
    }
}
