//! Tabular data in CSV (RFC 4180, read by the `csv` crate): one row per sample, one
//! label column, every other column a numeric feature; a sample is `[D]`, f32.
//!
//! [`load`] takes one `.csv` file (no test set: `test` is `None`) or a directory holding
//! `train.csv` and `test.csv`. Fields are trimmed of spaces.
//!
//! **Header** ([`Header`]): `Auto` takes the first row as a header when any of its
//! fields other than the label column is neither empty nor a number (an empty field
//! stays data, so a first row with a missing value is reported, not silently dropped);
//! a label column given by name needs a header. With two files, both headers (when
//! both have one) must name the same columns in the same order.
//!
//! **Features** parse as f32; an empty, non-numeric or non-finite field is refused,
//! naming its line (1-based, as an editor shows it) and its column (0-based, as
//! [`LabelColumn::Index`] counts, with its header name).
//!
//! **Labels**: when every label (of both files) is an integer in `0..=255` it is the
//! class id and `classes` is `None` (it follows from the labels). Otherwise each
//! distinct value is a class, numbered in sorted order — numerically when every value
//! is a number (`-1, 1` → 0, 1), else by string (`setosa, versicolor, virginica` → 0,
//! 1, 2) — over both files, so train and test agree; `classes` is then the number of
//! distinct values (at most 256). An empty label is refused.

use std::path::Path;

use super::bounds::{self, error};
use super::raw::{Loaded, Samples, Values};
use crate::Result;

/// Which column holds the label.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum LabelColumn {
    /// The column with this header name (needs a header row).
    Name(String),
    /// The column at this 0-based index.
    Index(usize),
    /// The last column.
    #[default]
    Last,
}

/// Whether the first row is a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Header {
    /// Decided from the first row (see the module doc).
    #[default]
    Auto,
    Yes,
    No,
}

const TRAIN: &str = "train.csv";
const TEST: &str = "test.csv";

/// Whether `path` is a `.csv` file or a directory holding `train.csv`.
pub fn is_csv(path: &Path) -> bool {
    if path.is_file() {
        return path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    }
    path.join(TRAIN).is_file()
}

/// Loads one `.csv` file, or `train.csv` and `test.csv` from a directory.
pub fn load(path: &Path, label: &LabelColumn, header: Header) -> Result<Loaded> {
    if path.is_dir() {
        let (train, test) = (path.join(TRAIN), path.join(TEST));
        for p in [&train, &test] {
            if !p.is_file() {
                return Err(error(
                    path,
                    format!(
                        "missing `{}` (a CSV directory holds {TRAIN} and {TEST})",
                        p.file_name().unwrap_or_default().to_string_lossy()
                    ),
                ));
            }
        }
        let (train_bytes, test_bytes) = (bounds::read_file(&train)?, bounds::read_file(&test)?);
        return parse(&train_bytes, &train, Some((&test_bytes, &test)), label, header);
    }
    parse(&bounds::read_file(path)?, path, None, label, header)
}

/// Parses a training file and maybe a test file held in memory (each with the path that
/// names it in errors): for tests and fuzzing.
pub fn parse(
    train: &[u8],
    train_source: &Path,
    test: Option<(&[u8], &Path)>,
    label: &LabelColumn,
    header: Header,
) -> Result<Loaded> {
    let train_table = Table::parse(train, train_source, label, header)?;
    let test_table = test
        .map(|(bytes, source)| Table::parse(bytes, source, label, header))
        .transpose()?;
    if let Some(test) = &test_table {
        let test_source = test.source;
        if test.features != train_table.features {
            return Err(error(
                test_source,
                format!(
                    "{} features per row but {} has {}",
                    test.features,
                    train_source.display(),
                    train_table.features
                ),
            ));
        }
        if let (Some(a), Some(b)) = (&train_table.header, &test.header)
            && let Some(j) = (0..a.len()).find(|&j| a[j] != b[j])
        {
            return Err(error(
                test_source,
                format!(
                    "column {j} is `{}` but in {} it is `{}`: the headers differ",
                    b[j],
                    train_source.display(),
                    a[j]
                ),
            ));
        }
    }
    let tables: Vec<&Table> = std::iter::once(&train_table).chain(&test_table).collect();
    let (mapping, classes) = class_ids(&tables)?;
    let samples = |t: Table| {
        let labels = t.labels.iter().map(|l| mapping.id(l)).collect();
        let s = Samples {
            shape: vec![t.features],
            values: Values::F32(t.values),
            labels,
        };
        s.check(t.source).map(|()| s)
    };
    let test = test_table.map(samples).transpose()?;
    Ok(Loaded {
        train: samples(train_table)?,
        test,
        classes,
    })
}

/// One file parsed: features row after row, and the label strings.
struct Table<'a> {
    source: &'a Path,
    header: Option<Vec<String>>,
    features: usize,
    values: Vec<f32>,
    labels: Vec<String>,
}

impl<'a> Table<'a> {
    fn parse(bytes: &[u8], source: &'a Path, label: &LabelColumn, header: Header) -> Result<Table<'a>> {
        let mut reader = ::csv::ReaderBuilder::new()
            .has_headers(false)
            .trim(::csv::Trim::All)
            .from_reader(bytes);
        let mut records = reader.records();
        let csv_error = |e: ::csv::Error| error(source, e.to_string());
        let first = records
            .next()
            .transpose()
            .map_err(csv_error)?
            .ok_or_else(|| error(source, "empty: no rows"))?;
        let width = first.len();
        let index = match label {
            LabelColumn::Index(i) => Some(*i),
            LabelColumn::Last => width.checked_sub(1),
            LabelColumn::Name(_) => None,
        };
        let is_header = match (header, label) {
            (Header::Yes, _) => true,
            (Header::No, _) => false,
            (Header::Auto, LabelColumn::Name(_)) => true,
            (Header::Auto, _) => first
                .iter()
                .enumerate()
                .any(|(j, f)| Some(j) != index && !f.is_empty() && f.parse::<f32>().is_err()),
        };
        let names: Option<Vec<String>> = is_header.then(|| first.iter().map(String::from).collect());
        let index = match (label, &names) {
            (LabelColumn::Name(name), Some(names)) => names
                .iter()
                .position(|n| n == name)
                .ok_or_else(|| error(source, format!("no column named `{name}`; the header names {names:?}")))?,
            (LabelColumn::Name(name), None) => {
                return Err(error(
                    source,
                    format!("the label column is named `{name}`, but the first row is not a header"),
                ));
            }
            _ => index.unwrap_or(0),
        };
        if index >= width || width < 2 {
            return Err(error(
                source,
                format!("{width} columns: the label column {index} and at least one feature are needed"),
            ));
        }
        let mut table = Table {
            source,
            header: names,
            features: width - 1,
            values: Vec::new(),
            labels: Vec::new(),
        };
        let data = (!is_header).then_some(Ok(first)).into_iter().chain(records);
        for record in data {
            let record = record.map_err(csv_error)?;
            table.push(&record, index)?;
        }
        if table.labels.is_empty() {
            return Err(error(source, "no data rows, only a header"));
        }
        Ok(table)
    }

    /// Appends one data row, checking every field.
    fn push(&mut self, record: &::csv::StringRecord, label: usize) -> Result<()> {
        let line = record.position().map_or(0, ::csv::Position::line);
        let total = (self.labels.len() as u64 + 1) * self.features as u64;
        bounds::check_values(self.source, total, &format!("line {line}"))?;
        for (j, field) in record.iter().enumerate() {
            let at = || match &self.header {
                Some(names) => format!("line {line}, column {j} (`{}`)", names[j]),
                None => format!("line {line}, column {j}"),
            };
            if j == label {
                if field.is_empty() {
                    return Err(error(self.source, format!("{}: the label is empty", at())));
                }
                self.labels.push(field.to_string());
                continue;
            }
            let value = match field.parse::<f32>() {
                _ if field.is_empty() => return Err(error(self.source, format!("{}: empty", at()))),
                Ok(v) if v.is_finite() => v,
                Ok(v) => return Err(error(self.source, format!("{}: {v} is not finite", at()))),
                Err(_) => return Err(error(self.source, format!("{}: `{field}` is not a number", at()))),
            };
            self.values.push(value);
        }
        Ok(())
    }
}

/// How label strings become class ids, and the number of classes when the labels were
/// names (see the module doc).
fn class_ids(tables: &[&Table]) -> Result<(Mapping, Option<usize>)> {
    let all = || tables.iter().flat_map(|t| t.labels.iter());
    if all().all(|l| l.parse::<u8>().is_ok()) {
        return Ok((Mapping::Ids, None));
    }
    let mut distinct: Vec<&String> = all().collect();
    distinct.sort();
    distinct.dedup();
    let numbers: Option<Vec<f64>> = distinct.iter().map(|l| l.parse::<f64>().ok()).collect();
    if let Some(numbers) = numbers {
        // Stable, so equal numbers written differently ("1", "1.0") keep string order.
        let mut order: Vec<usize> = (0..distinct.len()).collect();
        order.sort_by(|&a, &b| numbers[a].total_cmp(&numbers[b]));
        distinct = order.into_iter().map(|i| distinct[i]).collect();
    }
    if distinct.len() > 256 {
        return Err(error(
            tables[0].source,
            format!(
                "{} distinct labels: at most 256 classes (labels are u8)",
                distinct.len()
            ),
        ));
    }
    let classes = distinct.len();
    let ids = distinct
        .into_iter()
        .enumerate()
        .map(|(id, l)| (l.clone(), id as u8))
        .collect();
    Ok((Mapping::Names(ids), Some(classes)))
}

/// How label strings become class ids.
enum Mapping {
    /// The labels are the ids.
    Ids,
    /// Each distinct label's id.
    Names(std::collections::HashMap<String, u8>),
}

impl Mapping {
    /// The id of a label of the tables the mapping was built from.
    fn id(&self, label: &str) -> u8 {
        match self {
            Mapping::Ids => label.parse().unwrap_or(0),
            Mapping::Names(ids) => ids.get(label).copied().unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::bounds::test_support::{f32s, peak_memory, sklearn_data};
    use crate::data::test_util::TempDir;

    fn reason(err: crate::Error) -> (std::path::PathBuf, String) {
        match err {
            crate::Error::Data { path, reason } => (path, reason),
            other => panic!("expected a data error, got {other}"),
        }
    }

    fn one(text: &str, label: &LabelColumn, header: Header) -> Result<Loaded> {
        parse(text.as_bytes(), Path::new("t.csv"), None, label, header)
    }

    fn why(text: &str, label: &LabelColumn, header: Header) -> String {
        reason(one(text, label, header).unwrap_err()).1
    }

    #[test]
    fn iris_names_become_sorted_class_ids_over_both_files() {
        let train = "sepal_length,sepal_width,species\n5.1,3.5,setosa\n6.3, 3.3 ,virginica\n";
        let test = "sepal_length,sepal_width,species\n5.9,3.0,versicolor\n\"5.0\",3.6,setosa\n";
        let loaded = parse(
            train.as_bytes(),
            Path::new("train.csv"),
            Some((test.as_bytes(), Path::new("test.csv"))),
            &LabelColumn::Name("species".into()),
            Header::Auto,
        )
        .unwrap();
        assert_eq!(loaded.classes, Some(3));
        assert_eq!(loaded.train.shape, vec![2]);
        assert_eq!(f32s(&loaded.train.values), [5.1, 3.5, 6.3, 3.3]);
        assert_eq!(loaded.train.labels, vec![0, 2]);
        assert_eq!(loaded.test.unwrap().labels, vec![1, 0]);
    }

    #[test]
    fn integer_labels_are_ids_and_label_columns_by_index_or_last() {
        let loaded = one("0,1.5,2\n7,-3e2,4\n", &LabelColumn::Index(0), Header::Auto).unwrap();
        assert_eq!((loaded.classes, loaded.train.labels.clone()), (None, vec![0, 7]));
        assert_eq!(f32s(&loaded.train.values), [1.5, 2.0, -300.0, 4.0]);
        let loaded = one("1.5,2,9\n", &LabelColumn::Last, Header::No).unwrap();
        assert_eq!(loaded.train.labels, vec![9]);
        // Numbers that are not ids (negative, past 255) sort numerically, not as text.
        let loaded = one("1,10\n2,-1\n3,2\n4,300\n", &LabelColumn::Last, Header::Auto).unwrap();
        assert_eq!((loaded.classes, loaded.train.labels), (Some(4), vec![2, 0, 1, 3]));
    }

    #[test]
    fn header_detection() {
        // Auto: a non-numeric field outside the label column makes a header...
        let loaded = one("a,b,label\n1,2,0\n", &LabelColumn::Last, Header::Auto).unwrap();
        assert_eq!(loaded.train.len(), 1);
        // ...a non-numeric label alone does not (it is a class name)...
        let loaded = one("1,2,cat\n3,4,dog\n", &LabelColumn::Last, Header::Auto).unwrap();
        assert_eq!((loaded.train.len(), loaded.classes), (2, Some(2)));
        // ...nor does an empty field, which is then reported rather than dropped.
        assert_eq!(
            why("1,,0\n3,4,1\n", &LabelColumn::Last, Header::Auto),
            "line 1, column 1: empty"
        );
        // A byte-order mark (spreadsheets write one) is not part of the first name.
        let bom = one("\u{feff}x,y\n0,1.5\n", &LabelColumn::Name("x".into()), Header::Auto).unwrap();
        assert_eq!(f32s(&bom.train.values), [1.5]);
        // Yes and No are taken at their word.
        assert_eq!(
            one("1,2,0\n3,4,1\n", &LabelColumn::Last, Header::Yes)
                .unwrap()
                .train
                .len(),
            1
        );
        assert_eq!(
            why("a,b,label\n1,2,0\n", &LabelColumn::Last, Header::No),
            "line 1, column 0: `a` is not a number"
        );
    }

    #[test]
    fn errors_name_the_line_and_the_column() {
        let last = &LabelColumn::Last;
        assert_eq!(
            why("x,y,label\n1,2,0\n3,abc,1\n", last, Header::Auto),
            "line 3, column 1 (`y`): `abc` is not a number"
        );
        assert_eq!(
            why("x,y,label\n1,inf,0\n", last, Header::Auto),
            "line 2, column 1 (`y`): inf is not finite"
        );
        assert_eq!(
            why("x,y,label\n1,NaN,0\n", last, Header::Auto),
            "line 2, column 1 (`y`): NaN is not finite"
        );
        assert_eq!(
            why("x,y,label\n1,2,\n", last, Header::Auto),
            "line 2, column 2 (`label`): the label is empty"
        );
        assert_eq!(
            why("1,2,0\n1,2\n", last, Header::Auto),
            "CSV error: record 1 (line: 2, byte: 6): found record with 2 fields, but the previous record has 3 fields"
        );
        assert_eq!(why("", last, Header::Auto), "empty: no rows");
        assert_eq!(why("a,label\n", last, Header::Auto), "no data rows, only a header");
        assert!(why("1\n", last, Header::Auto).contains("at least one feature"));
        assert!(why("1,2\n", &LabelColumn::Index(2), Header::Auto).contains("label column 2"));
        assert_eq!(
            why("a,b\n1,2\n", &LabelColumn::Name("c".into()), Header::Auto),
            "no column named `c`; the header names [\"a\", \"b\"]"
        );
        assert!(why("1,2\n", &LabelColumn::Name("b".into()), Header::No).contains("not a header"));
        let many: String = (0..257).map(|i| format!("1,c{i}\n")).collect();
        assert_eq!(
            why(&many, last, Header::No),
            "257 distinct labels: at most 256 classes (labels are u8)"
        );
        let (_, why) = reason(
            parse(
                b"a,b\n1,0\n",
                Path::new("train.csv"),
                Some((b"b,a\n1,0\n", Path::new("test.csv"))),
                last,
                Header::Auto,
            )
            .unwrap_err(),
        );
        assert_eq!(why, "column 0 is `b` but in train.csv it is `a`: the headers differ");
        let (path, why) = reason(
            parse(
                b"1,2,0\n",
                Path::new("train.csv"),
                Some((b"1,0\n", Path::new("test.csv"))),
                last,
                Header::Auto,
            )
            .unwrap_err(),
        );
        assert_eq!(
            (path.to_str().unwrap(), why.as_str()),
            ("test.csv", "1 features per row but train.csv has 2")
        );
    }

    #[test]
    fn load_reads_a_file_or_a_directory() {
        let tmp = TempDir::new("csv");
        std::fs::write(tmp.path().join("train.csv"), "a,label\n1,0\n2,1\n").unwrap();
        assert!(is_csv(tmp.path()));
        let (path, why) = reason(load(tmp.path(), &LabelColumn::Last, Header::Auto).unwrap_err());
        assert_eq!(
            (path.as_path(), why.as_str()),
            (
                tmp.path(),
                "missing `test.csv` (a CSV directory holds train.csv and test.csv)"
            )
        );
        std::fs::write(tmp.path().join("test.csv"), "a,label\n3,1\n").unwrap();
        let loaded = load(tmp.path(), &LabelColumn::Last, Header::Auto).unwrap();
        assert_eq!(f32s(&loaded.test.unwrap().values), [3.0]);
        let file = tmp.path().join("train.csv");
        assert!(is_csv(&file));
        assert_eq!(load(&file, &LabelColumn::Last, Header::Auto).unwrap().test, None);
    }

    /// scikit-learn's breast cancer and wine sets as its export script writes them.
    #[test]
    fn real_sklearn_tables() {
        let Some(dir) = sklearn_data("real_sklearn_tables") else {
            return;
        };
        for (name, rows, features, classes) in [("breast_cancer", 569, 30, 2), ("wine", 178, 13, 3)] {
            let began = std::time::Instant::now();
            let loaded = load(&dir.join(name), &LabelColumn::Name("label".into()), Header::Auto).unwrap();
            let took = began.elapsed();
            let test = loaded.test.as_ref().unwrap();
            assert_eq!(loaded.train.len() + test.len(), rows, "{name}");
            assert_eq!(
                (loaded.train.shape.clone(), loaded.classes),
                (vec![features], None),
                "{name}"
            );
            let seen: std::collections::BTreeSet<u8> = loaded.train.labels.iter().copied().collect();
            assert_eq!(seen.len(), classes, "{name}");
            println!("MEASURED {name} csv: load {took:.2?}, {}", peak_memory());
        }
    }
}
