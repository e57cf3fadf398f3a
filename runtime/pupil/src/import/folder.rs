//! Importing a Hugging Face model folder: `config.json`, `tokenizer.json` (and a
//! sentence-transformers model's `sentence_bert_config.json` and `1_Pooling/`) beside
//! the weights: `model.safetensors`, or shards listed by `model.safetensors.index.json`
//! (`weight_map`: tensor name → shard file), or a single `.gguf` file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::error::ImportError;
use super::store::Target;
use super::{from_gguf, read, safetensors, Imported};

/// The single safetensors file a folder holds.
const SINGLE: &str = "model.safetensors";
/// The index of a sharded checkpoint.
const INDEX: &str = "model.safetensors.index.json";

/// The shard files `index` (the JSON at `path`) lists, in name order, each once.
fn shard_names(path: &Path, index: &[u8]) -> Result<Vec<String>, ImportError> {
    let bad = |reason: String| ImportError::SideFile {
        path: path.to_path_buf(),
        reason,
    };
    let index: Value =
        serde_json::from_slice(index).map_err(|e| bad(format!("not valid JSON ({e})")))?;
    let map = index
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("it has no \"weight_map\" object".into()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("the shard of {tensor:?} is not a file name")))?;
        // Shards are files in the folder, never paths out of it.
        if file.is_empty() || file.contains(['/', '\\']) || file == ".." {
            return Err(bad(format!(
                "shard {file:?} is not a file name in the folder"
            )));
        }
        shards.insert(file.to_owned());
    }
    if shards.is_empty() {
        return Err(bad("its \"weight_map\" lists no shards".into()));
    }
    Ok(shards.into_iter().collect())
}

/// The `.gguf` files in `dir`, in name order.
fn gguf_files(dir: &Path) -> Result<Vec<PathBuf>, ImportError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ImportError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    out.sort();
    Ok(out)
}

/// Imports the model folder `dir` as model `model_id`.
pub(crate) fn import(dir: &Path, model_id: &str, target: Target) -> Result<Imported, ImportError> {
    let index = dir.join(INDEX);
    if index.is_file() {
        let names = shard_names(&index, &read(&index)?)?;
        let shards = names
            .iter()
            .map(|n| read(&dir.join(n)))
            .collect::<Result<Vec<_>, _>>()?;
        let views: Vec<&[u8]> = shards.iter().map(Vec::as_slice).collect();
        return safetensors::import_shards(dir, &views, model_id, target);
    }
    let single = dir.join(SINGLE);
    if single.is_file() {
        return safetensors::import_shards(dir, &[&read(&single)?], model_id, target);
    }
    match gguf_files(dir)?.as_slice() {
        [one] => from_gguf::import(&read(one)?, model_id, target),
        _ => Err(ImportError::NoWeights {
            path: dir.to_path_buf(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_indexes_list_files_in_the_folder_only() {
        let p = Path::new("model.safetensors.index.json");
        let index = br#"{"metadata": {}, "weight_map": {"a": "model-2.safetensors", "b": "model-1.safetensors", "c": "model-2.safetensors"}}"#;
        assert_eq!(
            shard_names(p, index).unwrap(),
            ["model-1.safetensors", "model-2.safetensors"]
        );
        for bad in [
            &br#"{"weight_map": {"a": "../secret"}}"#[..],
            br#"{"weight_map": {"a": 3}}"#,
            br#"{"weight_map": {}}"#,
            br#"{"weights": {}}"#,
            b"not json",
        ] {
            assert!(matches!(
                shard_names(p, bad),
                Err(ImportError::SideFile { .. })
            ));
        }
    }
}
