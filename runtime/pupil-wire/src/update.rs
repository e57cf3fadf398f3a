//! Update messages: what a device sends upstream after refining a model.
//!
//! An update is a postcard-encoded *body* wrapped in a signed *envelope*. Both
//! decode without an allocator; every array borrows from the input bytes.
//!
//! # Envelope
//!
//! | size | field                                                      |
//! |------|------------------------------------------------------------|
//! | 8    | magic `PUPILUPD`                                           |
//! | var  | body length (postcard varint) then the body bytes          |
//! | 64   | Ed25519 signature of the body bytes by the device's key    |
//! | 8    | signer key id: the first 8 bytes of SHA-256 of its public key |
//!
//! Nothing may follow; the whole envelope is at most [`MAX_ENVELOPE_LEN`] bytes.
//!
//! # Body (postcard, at most [`MAX_UPDATE_LEN`] bytes)
//!
//! 1. version: varint, [`UPDATE_VERSION`];
//! 2. model id: string, 1..=[`MAX_ID_LEN`] bytes;
//! 3. base version: the 32-byte content hash of the `.pupil` model refined;
//! 4. device id: string, 1..=[`MAX_DEVICE_ID_LEN`] bytes;
//! 5. sequence number: varint, counted per device;
//! 6. number of local examples: varint;
//! 7. metrics: varint count ≤ [`MAX_METRICS`], each a name (1..=[`MAX_METRIC_NAME_LEN`]
//!    bytes) and a finite little-endian f32;
//! 8. deltas: varint count ≤ [`MAX_DELTA_TENSORS`], sorted strictly ascending by
//!    name, each a name (1..=[`MAX_NAME_LEN`](crate::MAX_NAME_LEN) bytes), a shape (varint rank ≤
//!    [`MAX_RANK`](crate::MAX_RANK) then varint dims, ≤ [`MAX_DELTA_ELEMENTS`] elements), an
//!    encoding code (varint) and its byte arrays (each a varint length and bytes):
//!    - `0` f16: values (`2 × elements`);
//!    - `1` int8: scales (`4 × rows` f32) and values (`elements` i8), see [`Encoding::Int8`];
//!    - `2` top-k: indices (`4 × k` u32, strictly ascending, below `elements`) and
//!      values (`2 × k` f16).
//!
//! Nothing may follow the last delta. Every f16 value, f32 scale and metric
//! must be finite.

use postcard::take_from_bytes;
use sha2::{Digest, Sha256};

use crate::{MAX_ID_LEN, MAX_TENSORS};

mod delta;
#[cfg(feature = "alloc")]
mod encode;
mod error;
#[cfg(all(test, feature = "alloc"))]
mod tests;

pub use delta::{rows_cols, Delta, Encoding};
#[cfg(feature = "alloc")]
pub use encode::{EncodedDelta, OwnedEncoding, TopK, UpdateDraft};
pub use error::UpdateError;

/// The 8 bytes every update envelope starts with.
pub const UPDATE_MAGIC: [u8; 8] = *b"PUPILUPD";
/// The body version this crate reads and writes.
pub const UPDATE_VERSION: u32 = 1;
/// Largest update body in bytes.
pub const MAX_UPDATE_LEN: usize = 64 << 20;
/// Largest envelope in bytes: the body plus its framing and signature.
pub const MAX_ENVELOPE_LEN: usize = MAX_UPDATE_LEN + 96;
/// Longest device id in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 64;
/// Most metrics in one update.
pub const MAX_METRICS: usize = 16;
/// Longest metric name in bytes.
pub const MAX_METRIC_NAME_LEN: usize = 32;
/// Most delta tensors in one update.
pub const MAX_DELTA_TENSORS: u32 = MAX_TENSORS;
/// Most elements of one delta tensor.
pub const MAX_DELTA_ELEMENTS: u64 = 1 << 28;
/// Size of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Size of a signer key id.
pub const KEY_ID_LEN: usize = 8;

/// Identifies a signer's public key: the first 8 bytes of its SHA-256.
pub type KeyId = [u8; KEY_ID_LEN];

/// The key id of an Ed25519 `public_key`.
pub fn key_id(public_key: &[u8; 32]) -> KeyId {
    let hash: [u8; 32] = Sha256::digest(public_key).into();
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&hash[..KEY_ID_LEN]);
    id
}

/// Decodes one postcard value of `field`, mapping decoder errors.
pub(crate) fn take<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    field: &'static str,
) -> Result<(T, &'a [u8]), UpdateError> {
    take_from_bytes(bytes).map_err(|error| UpdateError::Malformed { field, error })
}

/// A signed update: the body bytes, their signature and who signed them.
/// Parsing checks the framing only; the signature is verified by the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The postcard-encoded [`Update`] body; the signed message.
    pub body: &'a [u8],
    /// Ed25519 signature of `body`.
    pub signature: [u8; SIGNATURE_LEN],
    /// The signer's [`KeyId`].
    pub key_id: KeyId,
}

impl<'a> Envelope<'a> {
    /// Checks the framing of `bytes`: size limit, magic, body length,
    /// signature, key id and no trailing bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, UpdateError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(UpdateError::TooLarge {
                what: "envelope",
                len: bytes.len() as u64,
                max: MAX_ENVELOPE_LEN as u64,
            });
        }
        let rest = bytes
            .strip_prefix(&UPDATE_MAGIC)
            .ok_or(UpdateError::BadMagic)?;
        let (body, rest): (&[u8], _) = take(rest, "envelope body")?;
        let truncated = |field| UpdateError::Malformed {
            field,
            error: postcard::Error::DeserializeUnexpectedEnd,
        };
        let (signature, rest) = rest
            .split_first_chunk::<SIGNATURE_LEN>()
            .ok_or(truncated("envelope signature"))?;
        let (key_id, rest) = rest
            .split_first_chunk::<KEY_ID_LEN>()
            .ok_or(truncated("envelope key id"))?;
        if !rest.is_empty() {
            return Err(UpdateError::TrailingBytes {
                what: "envelope",
                extra: rest.len() as u64,
            });
        }
        Ok(Envelope {
            body,
            signature: *signature,
            key_id: *key_id,
        })
    }

    /// Encodes the envelope.
    #[cfg(feature = "alloc")]
    pub fn to_bytes(&self) -> Result<alloc::vec::Vec<u8>, UpdateError> {
        let mut out = alloc::vec::Vec::with_capacity(self.body.len() + 96);
        out.extend_from_slice(&UPDATE_MAGIC);
        out = postcard::to_extend(self.body, out).map_err(|error| UpdateError::Encode { error })?;
        out.extend_from_slice(&self.signature);
        out.extend_from_slice(&self.key_id);
        Ok(out)
    }
}

/// One named metric a device reports with its update, e.g. local loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metric<'a> {
    /// The metric's name, e.g. `loss`.
    pub name: &'a str,
    /// Its value; always finite.
    pub value: f32,
}

/// A decoded, fully validated update body.
#[derive(Clone, Debug, PartialEq)]
pub struct Update<'a> {
    /// The model refined, e.g. `mnist-mlp`.
    pub model_id: &'a str,
    /// The content hash of the `.pupil` model the delta applies to.
    pub base_version: [u8; 32],
    /// The sending device.
    pub device_id: &'a str,
    /// The device's sequence number for this update.
    pub seq: u64,
    /// How many local examples the refinement saw (the aggregation weight).
    pub num_examples: u64,
    /// Metrics reported with the update.
    pub metrics: heapless::Vec<Metric<'a>, MAX_METRICS>,
    /// The changed tensors.
    pub deltas: DeltaList<'a>,
}

impl<'a> Update<'a> {
    /// Decodes and checks `body` completely: every field, every delta, the
    /// name order, the bounds and that nothing follows.
    pub fn parse(body: &'a [u8]) -> Result<Self, UpdateError> {
        if body.len() > MAX_UPDATE_LEN {
            return Err(UpdateError::TooLarge {
                what: "body",
                len: body.len() as u64,
                max: MAX_UPDATE_LEN as u64,
            });
        }
        let (version, rest): (u32, _) = take(body, "version")?;
        if version != UPDATE_VERSION {
            return Err(UpdateError::UnsupportedVersion { found: version });
        }
        let (model_id, rest) = delta::bytes_str(rest, "model id", MAX_ID_LEN)?;
        let (base_version, rest): ([u8; 32], _) = take(rest, "base version")?;
        let (device_id, rest) = delta::bytes_str(rest, "device id", MAX_DEVICE_ID_LEN)?;
        let (seq, rest): (u64, _) = take(rest, "sequence number")?;
        let (num_examples, rest): (u64, _) = take(rest, "number of examples")?;
        let (metrics, rest) = decode_metrics(rest)?;
        let (count, rest): (u64, _) = take(rest, "delta count")?;
        let count = u32::try_from(count)
            .ok()
            .filter(|&c| c <= MAX_DELTA_TENSORS)
            .ok_or(UpdateError::TooManyDeltas { count })?;
        let deltas = DeltaList { bytes: rest, count };
        let mut iter = deltas.iter();
        let mut prev: Option<&str> = None;
        for (index, d) in (0u32..).zip(iter.by_ref()) {
            let d = d?;
            if prev.is_some_and(|p| p.as_bytes() >= d.name.as_bytes()) {
                return Err(UpdateError::NamesNotSorted { index });
            }
            prev = Some(d.name);
        }
        let extra = iter.rest.len();
        if extra != 0 {
            return Err(UpdateError::TrailingBytes {
                what: "body",
                extra: extra as u64,
            });
        }
        let deltas = DeltaList {
            bytes: rest.get(..rest.len() - extra).unwrap_or_default(),
            count,
        };
        Ok(Update {
            model_id,
            base_version,
            device_id,
            seq,
            num_examples,
            metrics,
            deltas,
        })
    }

    /// The sum of the squared L2 norms of all deltas.
    pub fn squared_norm(&self) -> f64 {
        self.deltas.iter().flatten().map(|d| d.squared_norm()).sum()
    }
}

/// Decodes the metric list.
fn decode_metrics(
    bytes: &[u8],
) -> Result<(heapless::Vec<Metric<'_>, MAX_METRICS>, &[u8]), UpdateError> {
    let (count, mut rest): (u64, _) = take(bytes, "metric count")?;
    if count > MAX_METRICS as u64 {
        return Err(UpdateError::TooManyMetrics { count });
    }
    let mut metrics = heapless::Vec::new();
    for index in 0..count as u32 {
        let (name, after) = delta::bytes_str(rest, "metric name", MAX_METRIC_NAME_LEN)?;
        let (value, after): (f32, _) = take(after, "metric value")?;
        if !value.is_finite() {
            return Err(UpdateError::NonFiniteMetric { index });
        }
        metrics
            .push(Metric { name, value })
            .map_err(|_| UpdateError::TooManyMetrics { count })?;
        rest = after;
    }
    Ok((metrics, rest))
}

/// The deltas of an [`Update`], decoded lazily from the body bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaList<'a> {
    bytes: &'a [u8],
    count: u32,
}

impl<'a> DeltaList<'a> {
    /// The number of deltas.
    pub const fn len(&self) -> u32 {
        self.count
    }

    /// Whether there are no deltas.
    pub const fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Iterates the deltas in name order. After [`Update::parse`] succeeded
    /// no item is an error.
    pub const fn iter(&self) -> DeltaIter<'a> {
        DeltaIter {
            rest: self.bytes,
            index: 0,
            count: self.count,
        }
    }
}

impl<'a> IntoIterator for &DeltaList<'a> {
    type Item = Result<Delta<'a>, UpdateError>;
    type IntoIter = DeltaIter<'a>;

    fn into_iter(self) -> DeltaIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`DeltaList`]; it stops after the first error.
#[derive(Clone, Debug)]
pub struct DeltaIter<'a> {
    rest: &'a [u8],
    index: u32,
    count: u32,
}

impl<'a> Iterator for DeltaIter<'a> {
    type Item = Result<Delta<'a>, UpdateError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.index >= self.count {
            return None;
        }
        match delta::decode_delta(self.rest, self.index) {
            Ok((d, rest)) => {
                self.rest = rest;
                self.index += 1;
                Some(Ok(d))
            }
            Err(e) => {
                self.index = self.count;
                Some(Err(e))
            }
        }
    }
}
