//! Making a delta: tensor by tensor, copy, XOR or literal.

use std::collections::BTreeMap;

use pupil_wire::ModelView;

use super::{put_varint, DeltaError, DELTA_MAGIC, DELTA_VERSION, OP_COPY, OP_LITERAL, OP_XOR};

/// A zero run shorter than this stays inside an XOR pair's bytes: ending a
/// pair and starting the next costs about two varint bytes.
const MIN_ZERO_RUN: usize = 3;

/// Where each tensor of a validated file lies: name → (file offset, length).
fn tensor_ranges<'a>(
    view: &ModelView<'a>,
) -> Result<BTreeMap<&'a str, (usize, usize)>, DeltaError> {
    let start = view.header.data_start();
    let mut out = BTreeMap::new();
    for entry in view.manifest.tensors.iter() {
        let entry = entry.map_err(DeltaError::NotAModel)?;
        // The view checked every range against the file, which is in memory.
        let at = usize::try_from(start + entry.offset).unwrap_or(usize::MAX);
        let len = usize::try_from(entry.len).unwrap_or(usize::MAX);
        out.insert(entry.name, (at, len));
    }
    Ok(out)
}

/// The delta that rebuilds `target` from `base`; both must be valid `.pupil`
/// files (their hashes go into the header).
pub fn encode(base: &[u8], target: &[u8]) -> Result<Vec<u8>, DeltaError> {
    let base_view = ModelView::parse(base).map_err(DeltaError::NotAModel)?;
    let target_view = ModelView::parse(target).map_err(DeltaError::NotAModel)?;
    let base_tensors = tensor_ranges(&base_view)?;
    let mut target_tensors: Vec<(&str, (usize, usize))> =
        tensor_ranges(&target_view)?.into_iter().collect();
    target_tensors.sort_by_key(|(_, (at, _))| *at);

    let mut out = Vec::new();
    out.extend_from_slice(&DELTA_MAGIC);
    out.extend_from_slice(&DELTA_VERSION.to_le_bytes());
    out.extend_from_slice(&base_view.manifest.content_hash);
    out.extend_from_slice(&target_view.manifest.content_hash);
    out.extend_from_slice(&(target.len() as u64).to_le_bytes());
    let mut cursor = 0;
    for (name, (at, len)) in target_tensors {
        if at > cursor {
            literal(&mut out, &target[cursor..at]);
        }
        let new = &target[at..at + len];
        match base_tensors.get(name) {
            Some(&(base_at, base_len)) if base_len == len => {
                let old = &base[base_at..base_at + len];
                if old == new {
                    out.push(OP_COPY);
                    put_varint(&mut out, base_at as u64);
                    put_varint(&mut out, len as u64);
                } else {
                    let runs = xor_runs(old, new);
                    if runs.len() < len {
                        out.push(OP_XOR);
                        put_varint(&mut out, base_at as u64);
                        put_varint(&mut out, len as u64);
                        out.extend_from_slice(&runs);
                    } else {
                        literal(&mut out, new);
                    }
                }
            }
            _ => literal(&mut out, new),
        }
        cursor = at + len;
    }
    if cursor < target.len() {
        literal(&mut out, &target[cursor..]);
    }
    Ok(out)
}

/// Appends a literal operation.
fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(OP_LITERAL);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// `old XOR new` as (zero run, literal) pairs; `old` and `new` have the same length.
fn xor_runs(old: &[u8], new: &[u8]) -> Vec<u8> {
    let xor: Vec<u8> = old.iter().zip(new).map(|(a, b)| a ^ b).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < xor.len() {
        let zeros = xor[i..].iter().take_while(|&&b| b == 0).count();
        let start = i + zeros;
        // Extend the literal until a zero run long enough to be worth a new pair.
        let mut end = start;
        while end < xor.len() {
            let run = xor[end..].iter().take_while(|&&b| b == 0).count();
            if run >= MIN_ZERO_RUN || end + run == xor.len() {
                break;
            }
            end += run.max(1);
        }
        put_varint(&mut out, zeros as u64);
        put_varint(&mut out, (end - start) as u64);
        out.extend_from_slice(&xor[start..end]);
        i = end;
    }
    out
}
