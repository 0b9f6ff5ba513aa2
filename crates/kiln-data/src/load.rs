//! Loading SST-2 and CNN/DailyMail splits from a file, a directory, or a hub dataset repository.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use kiln_models::hub::{HubOptions, Source};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Loc, Result, RowError};
use crate::formats::{self, Column, Format, Row, Value};

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The training split (`train`).
    Train,
    /// The validation split (`validation`; also matched by `dev`, `valid`, `val` file names).
    Validation,
    /// The test split (`test`).
    Test,
}

impl Split {
    /// The split's canonical name (`train`, `validation`, `test`).
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// File-name stems that denote the split (`dev` is GLUE's name for validation).
    pub fn aliases(self) -> &'static [&'static str] {
        match self {
            Split::Train => &["train"],
            Split::Validation => &["validation", "dev", "valid", "val"],
            Split::Test => &["test"],
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        [Split::Train, Split::Validation, Split::Test]
            .into_iter()
            .find(|sp| sp.aliases().contains(&s.as_str()))
            .ok_or_else(|| {
                Error::Input(format!(
                    "unknown split `{s}` (expected train, validation or test)"
                ))
            })
    }
}

/// What to do with a malformed row (or file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OnError {
    /// Stop with [`Error::Malformed`] naming the file and line/row.
    #[default]
    Fail,
    /// Leave the row out and record it in [`LoadReport::skipped`]; a malformed *file* (empty, unreadable, a
    /// header without a required column) is left out whole, recorded once.
    Skip,
}

/// Options for [`load_sst2`] and [`load_cnndm`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Keep at most this many (valid) rows, in file order.
    pub max_samples: Option<usize>,
    /// Fail on the first malformed row (default) or skip and report it.
    pub on_error: OnError,
    /// The dataset configuration, i.e. the subdirectory holding the split files (`"3.0.0"` for
    /// `abisee/cnn_dailymail`, `"sst2"` for `nyu-mll/glue`). When unset and the split exists in several
    /// subdirectories, the dataset's usual one is tried (`3.0.0`, `sst2`).
    pub config: Option<String>,
    /// Force a format when a directory holds the split in several (default preference: parquet, JSON
    /// lines, TSV, CSV).
    pub format: Option<Format>,
    /// Hub settings; `None` reads them from the environment ([`HubOptions::from_env`]).
    pub hub: Option<HubOptions>,
}

/// What a load read and left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    /// Rows kept.
    pub rows: usize,
    /// Rows (or whole files, [`Loc::File`]) left out with [`OnError::Skip`], with the reason.
    pub skipped: Vec<RowError>,
}

/// Examples plus the [`LoadReport`].
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The rows kept, in file order.
    pub examples: Vec<T>,
    /// The files read and the rows left out.
    pub report: LoadReport,
}

/// One SST-2 row. `label`: 1 positive, 0 negative, -1 unlabeled (the test split).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentimentExample {
    /// The `idx` column, or the row's position in the split (counting malformed rows) when there is none.
    pub idx: i64,
    /// The text.
    pub sentence: String,
    /// 1 positive, 0 negative, -1 unlabeled.
    pub label: i64,
}

/// One CNN/DailyMail row; highlight sentences are separated by `\n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryExample {
    /// The `id` column, or the row's position in the split when there is none.
    pub id: String,
    /// The news article (the source).
    pub article: String,
    /// The reference summary (the target), sentences separated by `\n`.
    pub highlights: String,
}

/// Load an SST-2 split (GLUE schema: `sentence`, `label`, optional `idx`/`index`).
///
/// `source` is a data file (read whatever `split` says; `split` only decides whether a missing label column
/// is allowed), a directory (the split's file is found by name: `train.tsv`, `dev.tsv`,
/// `data/validation-00000-of-00001.parquet`, ...), or a hub dataset id such as `stanfordnlp/sst2` or
/// `nyu-mll/glue` (config `sst2`), downloaded through the hub cache (offline from it with `HF_HUB_OFFLINE`).
///
/// Labels must be 0, 1 or -1. A file without a label column is accepted for the test split only (labels -1,
/// as GLUE's `test.tsv`).
pub fn load_sst2(
    source: &str,
    split: Split,
    opts: &LoadOptions,
) -> Result<Loaded<SentimentExample>> {
    let files = split_files(source, split, opts, &["sst2"])?;
    let cols = [
        Column {
            names: &["sentence"],
            required: true,
        },
        Column {
            names: &["label"],
            required: split != Split::Test,
        },
        Column {
            names: &["idx", "index"],
            required: false,
        },
    ];
    load_rows(&files, &cols, opts, |row, ordinal| {
        let sentence = text(&row[0], "sentence")?;
        let label = match &row[1] {
            None if split == Split::Test => -1,
            v => label(v)?,
        };
        let idx = match &row[2] {
            None | Some(Value::Null) => ordinal as i64,
            v => int(v, "idx")?,
        };
        Ok(SentimentExample {
            idx,
            sentence,
            label,
        })
    })
}

/// One sentence-pair row (GLUE's MRPC, RTE, QNLI, MNLI, … schemas): two texts and a class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairExample {
    /// The `idx` column, or the row's position in the split when there is none.
    pub idx: i64,
    /// The first text (`sentence1`, `#1 String`, `question`, `premise`, `question1`).
    pub text: String,
    /// The second text (`sentence2`, `#2 String`, `sentence`, `hypothesis`, `question2`).
    pub text_pair: String,
    /// The class index; -1 unlabeled (a test split). String labels map as GLUE's Hub datasets number them:
    /// `entailment` 0, `not_entailment` / `neutral` 1, `contradiction` 2.
    pub label: i64,
}

/// Load a sentence-pair classification split in the GLUE schemas: the Hub's `nyu-mll/glue` parquet and JSON
/// lines (`sentence1`, `sentence2`, `label`, `idx` for MRPC / RTE / WNLI / STS-B; `question` + `sentence` for
/// QNLI, `premise` + `hypothesis` for MNLI, `question1` + `question2` for QQP), GLUE's TSV files (RTE's
/// `index sentence1 sentence2 label` with string labels) and MRPC's original TSV (`Quality`, `#1 String`,
/// `#2 String`). `source` as for [`load_sst2`]; for a hub id the config (`mrpc`, `rte`, …) comes from
/// [`LoadOptions::config`], else `mrpc`.
pub fn load_pairs(source: &str, split: Split, opts: &LoadOptions) -> Result<Loaded<PairExample>> {
    let files = split_files(source, split, opts, &["mrpc"])?;
    let cols = [
        Column {
            names: &["sentence1", "#1 String", "question", "premise", "question1"],
            required: true,
        },
        Column {
            names: &[
                "sentence2",
                "#2 String",
                "sentence",
                "hypothesis",
                "question2",
            ],
            required: true,
        },
        Column {
            names: &["label", "Quality"],
            required: split != Split::Test,
        },
        Column {
            names: &["idx", "index"],
            required: false,
        },
    ];
    load_rows(&files, &cols, opts, |row, ordinal| {
        let text_a = text(&row[0], "sentence1")?;
        let text_b = text(&row[1], "sentence2")?;
        let label = match &row[2] {
            None if split == Split::Test => -1,
            Some(Value::Str(s)) if s.trim().parse::<i64>().is_err() => match s.trim() {
                "entailment" => 0,
                "not_entailment" | "neutral" => 1,
                "contradiction" => 2,
                other => {
                    return Err(format!(
                        "bad label: column `label`: {:?} is not a class index or a GLUE label name",
                        clip(other, 40)
                    ))
                }
            },
            v => {
                let l = int(v, "label").map_err(|e| format!("bad label: {e}"))?;
                if l < -1 {
                    return Err(format!(
                        "bad label: column `label`: {l} is not a class index or -1"
                    ));
                }
                l
            }
        };
        let idx = match &row[3] {
            None | Some(Value::Null) => ordinal as i64,
            v => int(v, "idx")?,
        };
        Ok(PairExample {
            idx,
            text: text_a,
            text_pair: text_b,
            label,
        })
    })
}

/// Load a CNN/DailyMail split (columns `article`, `highlights`, optional `id`). `source` as for
/// [`load_sst2`]; the hub id is `abisee/cnn_dailymail` (config `3.0.0`, train in several parquet shards).
pub fn load_cnndm(
    source: &str,
    split: Split,
    opts: &LoadOptions,
) -> Result<Loaded<SummaryExample>> {
    let files = split_files(source, split, opts, &["3.0.0"])?;
    let cols = [
        Column {
            names: &["article"],
            required: true,
        },
        Column {
            names: &["highlights"],
            required: true,
        },
        Column {
            names: &["id"],
            required: false,
        },
    ];
    load_rows(&files, &cols, opts, |row, ordinal| {
        let article = text(&row[0], "article")?;
        let highlights = text(&row[1], "highlights")?;
        let id = match &row[2] {
            None | Some(Value::Null) => ordinal.to_string(),
            Some(Value::Int(i)) => i.to_string(),
            v => text(v, "id")?,
        };
        Ok(SummaryExample {
            id,
            article,
            highlights,
        })
    })
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Int(i) => format!("the integer {i}"),
        Value::Str(s) => format!("{:?}", clip(s, 40)),
        Value::Invalid(r) => r.clone(),
        Value::Other(t) => (*t).to_string(),
    }
}

fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn text(v: &Option<Value>, col: &str) -> std::result::Result<String, String> {
    match v {
        None => Err(format!("missing column `{col}`")),
        Some(Value::Str(s)) => Ok(s.clone()),
        Some(Value::Invalid(r)) => Err(format!("column `{col}`: {r}")),
        Some(other) => Err(format!(
            "column `{col}`: expected text, found {}",
            describe(other)
        )),
    }
}

fn int(v: &Option<Value>, col: &str) -> std::result::Result<i64, String> {
    match v {
        None => Err(format!("missing column `{col}`")),
        Some(Value::Int(i)) => Ok(*i),
        Some(Value::Str(s)) => s.trim().parse().map_err(|_| {
            format!(
                "column `{col}`: expected an integer, found {}",
                describe(&Value::Str(s.clone()))
            )
        }),
        Some(other) => Err(format!(
            "column `{col}`: expected an integer, found {}",
            describe(other)
        )),
    }
}

fn label(v: &Option<Value>) -> std::result::Result<i64, String> {
    let l = int(v, "label").map_err(|e| format!("bad label: {e}"))?;
    if !(-1..=1).contains(&l) {
        return Err(format!("bad label: column `label`: {l} is not 0, 1 or -1"));
    }
    Ok(l)
}

/// Read `files` in order through `convert(row, ordinal)`, honouring `max_samples` and `on_error`.
fn load_rows<T>(
    files: &[PathBuf],
    cols: &[Column],
    opts: &LoadOptions,
    convert: impl Fn(&Row, usize) -> std::result::Result<T, String>,
) -> Result<Loaded<T>> {
    let mut examples = Vec::new();
    let mut report = LoadReport::default();
    let max = opts.max_samples.unwrap_or(usize::MAX);
    let mut ordinal = 0usize;
    for file in files {
        if examples.len() >= max {
            break;
        }
        let format = Format::from_path(file)
            .or(opts.format)
            .ok_or_else(|| Error::UnsupportedFormat { path: file.clone() })?;
        report.files.push(file.clone());
        let mut sink = |loc: Loc, row: std::result::Result<Row, String>| -> Result<bool> {
            let n = ordinal;
            ordinal += 1;
            match row.and_then(|r| convert(&r, n)) {
                Ok(ex) => examples.push(ex),
                Err(reason) => {
                    let e = RowError {
                        file: file.clone(),
                        loc,
                        reason,
                    };
                    match opts.on_error {
                        OnError::Fail => return Err(Error::Malformed(e)),
                        OnError::Skip => report.skipped.push(e),
                    }
                }
            }
            Ok(examples.len() < max)
        };
        match formats::read(file, format, cols, &mut sink) {
            Ok(()) => {}
            // With Skip the sink never fails, so a `Malformed` here is about the file as a whole.
            Err(Error::Malformed(e)) if opts.on_error == OnError::Skip => report.skipped.push(e),
            Err(e) => return Err(e),
        }
    }
    report.rows = examples.len();
    Ok(Loaded { examples, report })
}

// ---------------------------------------------------------------------------------------------------------
// Finding a split's files

/// The files holding `split` in `source` (a file, a directory or a hub dataset id), in shard order.
/// Hub files are downloaded into the cache. `default_configs` are tried when the split exists in several
/// subdirectories and [`LoadOptions::config`] is unset.
pub fn split_files(
    source: &str,
    split: Split,
    opts: &LoadOptions,
    default_configs: &[&str],
) -> Result<Vec<PathBuf>> {
    let p = Path::new(source);
    if p.is_file() {
        if Format::from_path(p).or(opts.format).is_none() {
            return Err(Error::UnsupportedFormat {
                path: p.to_path_buf(),
            });
        }
        return Ok(vec![p.to_path_buf()]);
    }
    let src = if p.is_dir() {
        Source::Dir(p.to_path_buf())
    } else {
        Source::resolve_dataset(
            source,
            opts.hub.clone().unwrap_or_else(HubOptions::from_env),
        )?
    };
    let listed = src.list_files()?;
    let chosen = choose_split_files(source, &listed, split, opts, default_configs)?;
    chosen.iter().map(|f| Ok(src.require(f)?)).collect()
}

/// Pick the split's files among `listed` (relative `/`-separated paths).
pub(crate) fn choose_split_files(
    source: &str,
    listed: &[String],
    split: Split,
    opts: &LoadOptions,
    default_configs: &[&str],
) -> Result<Vec<String>> {
    let mut cands: Vec<(&str, Format)> = listed
        .iter()
        .filter_map(|f| {
            let path = Path::new(f);
            let fmt = Format::from_path(path)?;
            let stem = path.file_name()?.to_str()?.split('.').next()?;
            split
                .aliases()
                .iter()
                .any(|a| stem_matches(stem, a))
                .then_some((f.as_str(), fmt))
        })
        .collect();
    let no_split = |hint: String| Error::NoSplit {
        dataset: source.into(),
        split: split.name().into(),
        hint,
    };
    if cands.is_empty() {
        let shown: Vec<&str> = listed
            .iter()
            .filter(|f| Format::from_path(Path::new(f)).is_some())
            .map(|f| f.as_str())
            .take(20)
            .collect();
        return Err(no_split(if shown.is_empty() {
            " (no data files at all)".into()
        } else {
            format!(" (data files: {})", shown.join(", "))
        }));
    }
    let dir = |f: &str| {
        f.rsplit_once('/')
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    };
    let in_config = |f: &str, c: &str| dir(f).split('/').any(|part| part == c);
    if let Some(c) = &opts.config {
        cands.retain(|(f, _)| in_config(f, c));
        if cands.is_empty() {
            return Err(no_split(format!(" in config `{c}`")));
        }
    } else {
        let mut dirs: Vec<String> = cands.iter().map(|(f, _)| dir(f)).collect();
        dirs.sort();
        dirs.dedup();
        if dirs.len() > 1 {
            if let Some(c) = default_configs
                .iter()
                .find(|c| cands.iter().any(|(f, _)| in_config(f, c)))
            {
                cands.retain(|(f, _)| in_config(f, c));
            }
            let mut left: Vec<String> = cands.iter().map(|(f, _)| dir(f)).collect();
            left.sort();
            left.dedup();
            if left.len() > 1 {
                return Err(Error::AmbiguousConfig {
                    dataset: source.into(),
                    split: split.name().into(),
                    configs: left,
                });
            }
        }
    }
    let format = match opts.format {
        Some(f) => f,
        None => *[Format::Parquet, Format::Jsonl, Format::Tsv, Format::Csv]
            .iter()
            .find(|f| cands.iter().any(|(_, g)| g == *f))
            .expect("candidates are non-empty"),
    };
    let mut files: Vec<String> = cands
        .iter()
        .filter(|(_, g)| *g == format)
        .map(|(f, _)| f.to_string())
        .collect();
    if files.is_empty() {
        return Err(no_split(format!(" in format {format:?}")));
    }
    files.sort();
    Ok(files)
}

/// `train`, or a shard name `train-00000-of-00003` (optionally with a `-<hash>` suffix, as older hub
/// conversions wrote).
fn stem_matches(stem: &str, alias: &str) -> bool {
    if stem == alias {
        return true;
    }
    let Some(rest) = stem.strip_prefix(alias).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let mut parts = rest.split('-');
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && parts.next() == Some("of") && digits(parts.next())
}
