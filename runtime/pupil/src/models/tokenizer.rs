//! Text tokenizers stored in model files: the Hugging Face `tokenizer.json` held in the U8
//! tensor [`TOKENIZER_TENSOR`](crate::import::TOKENIZER_TENSOR), loaded with the
//! `tokenizers` crate.

use tokenizers::{Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::format::ModelFile;
use crate::import::TOKENIZER_TENSOR;

/// A model's tokenizer, without padding (batches are padded by the model) and truncating
/// each input to a maximum number of tokens, special tokens included.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .finish()
    }
}

impl TextTokenizer {
    /// Parses the `tokenizer.json` bytes, drops its padding and truncates at `max_len` tokens
    /// (`None` keeps the file's truncation setting).
    pub fn from_json(json: &[u8], max_len: Option<usize>) -> Result<TextTokenizer> {
        let mut inner = Tokenizer::from_bytes(json).map_err(|e| {
            Error::Invalid(format!(
                "the model's tokenizer.json is invalid ({e}); convert the model again with `pupil convert`"
            ))
        })?;
        inner.with_padding(None);
        if let Some(max_length) = max_len {
            inner
                .with_truncation(Some(TruncationParams {
                    max_length,
                    ..TruncationParams::default()
                }))
                .map_err(|e| Error::Invalid(format!("cannot truncate at {max_length}: {e}")))?;
        }
        Ok(TextTokenizer { inner })
    }

    /// The tokenizer stored in `file` (see [`TextTokenizer::from_json`]).
    pub fn from_model(file: &ModelFile, max_len: Option<usize>) -> Result<TextTokenizer> {
        let t = file.tensor(TOKENIZER_TENSOR).map_err(|_| {
            Error::Invalid(format!(
                "model {:?} holds no tokenizer (tensor {TOKENIZER_TENSOR:?}); convert it with `pupil convert` from a folder that has tokenizer.json",
                file.info().model_id.as_str()
            ))
        })?;
        Self::from_json(t.bytes, max_len)
    }

    /// The token ids of `text`, with the model's special tokens (e.g. `[CLS]`, `[SEP]`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, true)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Invalid(format!("cannot tokenize {text:?}: {e}")))
    }

    /// The text of token ids `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Invalid(format!("cannot decode {ids:?}: {e}")))
    }
}
