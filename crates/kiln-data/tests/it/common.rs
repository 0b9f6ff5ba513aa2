use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_models::hub::HubOptions;
use kiln_models::tokenizer::Tokenizer;
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

pub fn samples() -> PathBuf {
    fixtures().join("samples")
}

pub fn sample(rel: &str) -> String {
    samples().join(rel).to_str().unwrap().to_string()
}

pub fn bert_tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("bert/tokenizer.json")).unwrap()
}

pub fn t5_tokenizer() -> Tokenizer {
    Tokenizer::from_file(&fixtures().join("t5/tokenizer.json")).unwrap()
}

/// A parquet column for the test writer (all columns written as `optional`, as `datasets` writes them).
pub enum Col {
    I32(Vec<Option<i32>>),
    I64(Vec<Option<i64>>),
    /// UTF8-annotated byte arrays (bytes, so invalid UTF-8 can be written).
    Str(Vec<Option<Vec<u8>>>),
}

impl Col {
    pub fn strs<S: AsRef<str>>(v: &[S]) -> Col {
        Col::Str(
            v.iter()
                .map(|s| Some(s.as_ref().as_bytes().to_vec()))
                .collect(),
        )
    }
    fn len(&self) -> usize {
        match self {
            Col::I32(v) => v.len(),
            Col::I64(v) => v.len(),
            Col::Str(v) => v.len(),
        }
    }
}

fn split_opt<T: Clone>(v: &[Option<T>]) -> (Vec<T>, Vec<i16>) {
    (
        v.iter().flatten().cloned().collect(),
        v.iter().map(|x| x.is_some() as i16).collect(),
    )
}

/// Write a snappy-compressed parquet file with `row_group_size` rows per row group.
pub fn write_parquet(path: &Path, cols: &[(&str, Col)], row_group_size: usize) {
    let fields: Vec<String> = cols
        .iter()
        .map(|(n, c)| match c {
            Col::I32(_) => format!("optional int32 {n};"),
            Col::I64(_) => format!("optional int64 {n};"),
            Col::Str(_) => format!("optional binary {n} (UTF8);"),
        })
        .collect();
    let schema = Arc::new(
        parse_message_type(&format!("message schema {{ {} }}", fields.join(" "))).unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = SerializedFileWriter::new(file, schema, props).unwrap();
    let n = cols[0].1.len();
    let mut start = 0;
    while start < n || (n == 0 && start == 0) {
        let end = (start + row_group_size).min(n);
        let mut rg = w.next_row_group().unwrap();
        for (_, c) in cols {
            let mut cw = rg.next_column().unwrap().unwrap();
            match c {
                Col::I32(v) => {
                    let (vals, defs) = split_opt(&v[start..end]);
                    cw.typed::<Int32Type>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                Col::I64(v) => {
                    let (vals, defs) = split_opt(&v[start..end]);
                    cw.typed::<Int64Type>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
                Col::Str(v) => {
                    let (vals, defs) = split_opt(&v[start..end]);
                    let vals: Vec<ByteArray> = vals.into_iter().map(ByteArray::from).collect();
                    cw.typed::<ByteArrayType>()
                        .write_batch(&vals, Some(&defs), None)
                        .unwrap();
                }
            }
            cw.close().unwrap();
        }
        rg.close().unwrap();
        if n == 0 {
            break;
        }
        start = end;
    }
    w.close().unwrap();
}

/// An SST-2 split as the hub's `stanfordnlp/sst2` parquet (idx int32, sentence, label int64).
pub fn write_sst2_parquet(
    path: &Path,
    rows: &[kiln_data::SentimentExample],
    row_group_size: usize,
) {
    write_parquet(
        path,
        &[
            (
                "idx",
                Col::I32(rows.iter().map(|r| Some(r.idx as i32)).collect()),
            ),
            (
                "sentence",
                Col::strs(&rows.iter().map(|r| r.sentence.as_str()).collect::<Vec<_>>()),
            ),
            (
                "label",
                Col::I64(rows.iter().map(|r| Some(r.label)).collect()),
            ),
        ],
        row_group_size,
    );
}

/// A CNN/DailyMail split as the hub's `abisee/cnn_dailymail` parquet (article, highlights, id).
pub fn write_cnndm_parquet(path: &Path, rows: &[kiln_data::SummaryExample], row_group_size: usize) {
    let col = |f: fn(&kiln_data::SummaryExample) -> &str| {
        Col::strs(&rows.iter().map(f).collect::<Vec<_>>())
    };
    write_parquet(
        path,
        &[
            ("article", col(|r| &r.article)),
            ("highlights", col(|r| &r.highlights)),
            ("id", col(|r| &r.id)),
        ],
        row_group_size,
    );
}

pub fn hub_opts(cache: &Path, endpoint: Option<&str>, offline: bool) -> HubOptions {
    HubOptions {
        cache_dir: cache.to_path_buf(),
        endpoint: endpoint.map(str::to_string),
        offline,
        revision: "main".into(),
        progress: false,
    }
}
