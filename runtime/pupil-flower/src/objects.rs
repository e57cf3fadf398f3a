//! Flower's content-addressed objects (`flwr/supercore/inflatable`): a message travels as a
//! tree of objects, each `"<Type> <child ids, comma-separated> <body length>\0<body>"` and
//! named by the SHA-256 of those bytes, which the SuperLink checks. A `Message`'s child is
//! a `RecordDict` (JSON: record name to id), whose children are `ArrayRecord`s (JSON: array
//! name to id), `MetricRecord`s and `ConfigRecord`s (protobuf); an `Array` (JSON: dtype,
//! shape, storage type and chunk indices) has `ArrayChunk` children holding its `.npy`
//! bytes in pieces of at most 5 MiB. JSON is written as Python's `json.dumps` writes it,
//! so an array pupil sends has the id Python gives the same array.

use std::collections::{BTreeMap, HashMap};

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::npy;
use crate::proto;

/// Flower's largest array chunk (`FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE`).
pub const MAX_CHUNK: usize = 5 << 20;
/// The storage type of NumPy arrays.
const NUMPY: &str = "numpy.ndarray";

/// Why an object could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The bytes are not an object of the expected form.
    #[error("object {id}: {why}")]
    Malformed {
        /// The object's id.
        id: String,
        /// What is wrong.
        why: String,
    },
    /// An object named in the tree was not among those pulled.
    #[error("object {0} is missing from the message")]
    Missing(String),
    /// The bytes do not hash to the object's id.
    #[error("object {0}: its content does not hash to its id")]
    WrongId(String),
    /// An array's `.npy` bytes are not an array pupil reads.
    #[error("array: {0}")]
    Array(String),
}

/// The SHA-256 of an object's bytes, in hex: its id.
pub fn object_id(content: &[u8]) -> String {
    Sha256::digest(content)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// An object's bytes: its head (type, child ids, body length), a zero byte, the body.
pub fn encode(kind: &str, children: &[String], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{kind} {} {}", children.join(","), body.len()).into_bytes();
    out.push(0);
    out.extend(body);
    out
}

/// The type, child ids and body of the object `id` with bytes `content`, checked against
/// its id and its stated body length.
pub fn decode<'a>(
    id: &str,
    content: &'a [u8],
) -> Result<(&'a str, Vec<&'a str>, &'a [u8]), ObjectError> {
    let malformed = |why: &str| ObjectError::Malformed {
        id: id.to_owned(),
        why: why.to_owned(),
    };
    if object_id(content) != id {
        return Err(ObjectError::WrongId(id.to_owned()));
    }
    let split = content
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("no head"))?;
    let head = std::str::from_utf8(&content[..split]).map_err(|_| malformed("head not text"))?;
    let body = &content[split + 1..];
    let mut parts = head.split(' ');
    let (Some(kind), Some(children), Some(len), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("head is not type, children, length"));
    };
    if len.parse::<usize>().ok() != Some(body.len()) {
        return Err(malformed("body length differs from the head's"));
    }
    let children = children.split(',').filter(|c| !c.is_empty()).collect();
    Ok((kind, children, body))
}

/// One named array: NumPy's dtype name, shape and `.npy` bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// NumPy's name of the element type (`float32`).
    pub dtype: String,
    /// The shape.
    pub shape: Vec<usize>,
    /// The `.npy` bytes.
    pub npy: Vec<u8>,
}

impl Array {
    /// An f32 array of `shape` holding `values`.
    pub fn from_f32(shape: &[usize], values: &[f32]) -> Array {
        Array {
            dtype: npy::Dtype::F32.name().into(),
            shape: shape.to_vec(),
            npy: npy::write_f32(shape, values),
        }
    }

    /// The values as f32 (from f32, f64, i32 or i64 arrays) and the shape.
    pub fn to_f32(&self) -> Result<(Vec<usize>, Vec<f32>), ObjectError> {
        let (_, shape, values) = npy::read_f32(&self.npy)?;
        Ok((shape, values))
    }
}

/// One record of a [`RecordDict`].
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Named arrays (model weights).
    Arrays(Vec<(String, Array)>),
    /// Named metrics (`num-examples`, loss, accuracy).
    Metrics(proto::MetricRecord),
    /// Named configuration values (learning rate, round).
    Config(proto::ConfigRecord),
}

/// A message's content: named records, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecordDict(pub Vec<(String, Record)>);

impl RecordDict {
    /// The first array record's arrays.
    pub fn arrays(&self) -> Option<&[(String, Array)]> {
        self.0.iter().find_map(|(_, r)| match r {
            Record::Arrays(a) => Some(a.as_slice()),
            _ => None,
        })
    }

    /// The number under `key` in the first config record that has it (a float or an
    /// integer).
    pub fn config_number(&self, key: &str) -> Option<f64> {
        use proto::config_record_value::Value;
        self.0.iter().find_map(|(_, r)| match r {
            Record::Config(c) => c.items.iter().find(|i| i.key == key).and_then(|i| {
                match i.value.as_ref()?.value.as_ref()? {
                    Value::Double(v) => Some(*v),
                    Value::Sint64(v) => Some(*v as f64),
                    Value::Uint64(v) => Some(*v as f64),
                    _ => None,
                }
            }),
            _ => None,
        })
    }
}

/// A metric record of these values: integers as Flower's `int`, the rest as `float`.
pub fn metric_record(items: &[(&str, Metric)]) -> Record {
    use proto::metric_record_value::Value;
    Record::Metrics(proto::MetricRecord {
        items: items
            .iter()
            .map(|(key, m)| proto::metric_record::Item {
                key: (*key).to_owned(),
                value: Some(proto::MetricRecordValue {
                    value: Some(match m {
                        Metric::Int(v) => Value::Sint64(*v),
                        Metric::Float(v) => Value::Double(*v),
                    }),
                }),
            })
            .collect(),
    })
}

/// One metric's value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Metric {
    /// An integer (`num-examples`).
    Int(i64),
    /// A float (loss, accuracy).
    Float(f64),
}

/// An object tree ready to send: the root's id, the tree and every object's bytes
/// (children before parents).
#[derive(Clone, Debug)]
pub struct Deflated {
    /// The root object's id.
    pub id: String,
    /// The tree of ids.
    pub tree: proto::ObjectTree,
    /// Each object's id and bytes, children first, each id once.
    pub objects: Vec<(String, Vec<u8>)>,
}

/// Python's `json.dumps` of a string-to-string map, in the given order.
fn json_refs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let items: Vec<String> = pairs
        .map(|(k, v)| format!("{}: {}", json_string(k), json_string(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Collects objects while a tree is built, each id once.
#[derive(Default)]
struct Builder {
    objects: Vec<(String, Vec<u8>)>,
    seen: std::collections::HashSet<String>,
}

impl Builder {
    /// Adds an object with these children and body; returns its tree.
    fn add(&mut self, kind: &str, all: Vec<proto::ObjectTree>, body: &[u8]) -> proto::ObjectTree {
        // Each distinct child once, as Flower keeps them (two equal arrays are one object).
        let mut children: Vec<proto::ObjectTree> = Vec::new();
        for c in all {
            if !children.iter().any(|d| d.object_id == c.object_id) {
                children.push(c);
            }
        }
        let ids: Vec<String> = children.iter().map(|c| c.object_id.clone()).collect();
        let content = encode(kind, &ids, body);
        let id = object_id(&content);
        if self.seen.insert(id.clone()) {
            self.objects.push((id.clone(), content));
        }
        proto::ObjectTree {
            object_id: id,
            children,
        }
    }

    fn array(&mut self, a: &Array) -> proto::ObjectTree {
        let chunks: Vec<proto::ObjectTree> = a
            .npy
            .chunks(MAX_CHUNK)
            .map(|c| self.add("ArrayChunk", Vec::new(), c))
            .collect();
        let mut unique: Vec<&str> = Vec::new();
        let mut indices = Vec::new();
        for c in &chunks {
            let at = unique
                .iter()
                .position(|u| *u == c.object_id)
                .unwrap_or_else(|| {
                    unique.push(&c.object_id);
                    unique.len() - 1
                });
            indices.push(at.to_string());
        }
        let dims: Vec<String> = a.shape.iter().map(usize::to_string).collect();
        let body = format!(
            "{{\"dtype\": {}, \"shape\": [{}], \"stype\": \"{NUMPY}\", \"arraychunk_ids\": [{}]}}",
            json_string(&a.dtype),
            dims.join(", "),
            indices.join(", ")
        );
        self.add("Array", chunks, body.as_bytes())
    }

    fn record(&mut self, r: &Record) -> proto::ObjectTree {
        match r {
            Record::Arrays(arrays) => {
                let trees: Vec<proto::ObjectTree> =
                    arrays.iter().map(|(_, a)| self.array(a)).collect();
                let body = json_refs(
                    arrays
                        .iter()
                        .zip(&trees)
                        .map(|((n, _), t)| (n.as_str(), t.object_id.as_str())),
                );
                self.add("ArrayRecord", trees, body.as_bytes())
            }
            Record::Metrics(m) => self.add("MetricRecord", Vec::new(), &m.encode_to_vec()),
            Record::Config(c) => self.add("ConfigRecord", Vec::new(), &c.encode_to_vec()),
        }
    }

    fn records(&mut self, content: &RecordDict) -> proto::ObjectTree {
        let trees: Vec<proto::ObjectTree> = content.0.iter().map(|(_, r)| self.record(r)).collect();
        let body = json_refs(
            content
                .0
                .iter()
                .zip(&trees)
                .map(|((n, _), t)| (n.as_str(), t.object_id.as_str())),
        );
        self.add("RecordDict", trees, body.as_bytes())
    }
}

/// A message's objects: its metadata (the message id left empty, as Flower hashes it) over
/// `content`. The returned id is the message's id.
pub fn deflate_message(metadata: &proto::Metadata, content: &RecordDict) -> Deflated {
    let mut b = Builder::default();
    let records = b.records(content);
    let body = proto::Message {
        metadata: Some(proto::Metadata {
            message_id: String::new(),
            ..metadata.clone()
        }),
        content: None,
        error: None,
    }
    .encode_to_vec();
    let tree = b.add("Message", vec![records], &body);
    Deflated {
        id: tree.object_id.clone(),
        tree,
        objects: b.objects,
    }
}

/// An error reply's single object: its metadata (message id left empty) and `error`, no
/// content.
pub fn deflate_error_message(metadata: &proto::Metadata, error: proto::Error) -> Deflated {
    let mut b = Builder::default();
    let body = proto::Message {
        metadata: Some(proto::Metadata {
            message_id: String::new(),
            ..metadata.clone()
        }),
        content: None,
        error: Some(error),
    }
    .encode_to_vec();
    let tree = b.add("Message", Vec::new(), &body);
    Deflated {
        id: tree.object_id.clone(),
        tree,
        objects: b.objects,
    }
}

/// Reads objects by id from what was pulled, each checked against its id.
struct Reader<'a> {
    objects: &'a HashMap<String, Vec<u8>>,
}

impl Reader<'_> {
    fn get(&self, id: &str, kind: &str) -> Result<(Vec<String>, &[u8]), ObjectError> {
        let content = self
            .objects
            .get(id)
            .ok_or_else(|| ObjectError::Missing(id.to_owned()))?;
        let (got, children, body) = decode(id, content)?;
        if got != kind {
            return Err(ObjectError::Malformed {
                id: id.to_owned(),
                why: format!("a {got} where a {kind} belongs"),
            });
        }
        Ok((children.into_iter().map(str::to_owned).collect(), body))
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        id: &str,
        body: &[u8],
    ) -> Result<T, ObjectError> {
        serde_json::from_slice(body).map_err(|e| ObjectError::Malformed {
            id: id.to_owned(),
            why: e.to_string(),
        })
    }

    fn array(&self, id: &str) -> Result<Array, ObjectError> {
        #[derive(serde::Deserialize)]
        struct Meta {
            dtype: String,
            shape: Vec<usize>,
            stype: String,
            arraychunk_ids: Vec<usize>,
        }
        let (children, body) = self.get(id, "Array")?;
        let meta: Meta = self.json(id, body)?;
        if meta.stype != NUMPY {
            return Err(ObjectError::Array(format!(
                "storage type {:?}: only {NUMPY} is read",
                meta.stype
            )));
        }
        let mut npy = Vec::new();
        for i in meta.arraychunk_ids {
            let chunk = children.get(i).ok_or_else(|| ObjectError::Malformed {
                id: id.to_owned(),
                why: format!("chunk index {i} of {} chunks", children.len()),
            })?;
            npy.extend(self.get(chunk, "ArrayChunk")?.1);
        }
        Ok(Array {
            dtype: meta.dtype,
            shape: meta.shape,
            npy,
        })
    }

    fn record(&self, id: &str) -> Result<Record, ObjectError> {
        let content = self
            .objects
            .get(id)
            .ok_or_else(|| ObjectError::Missing(id.to_owned()))?;
        let (kind, _, body) = decode(id, content)?;
        let proto_error = |e: prost::DecodeError| ObjectError::Malformed {
            id: id.to_owned(),
            why: e.to_string(),
        };
        match kind {
            "ArrayRecord" => {
                let refs: BTreeMap<String, String> = self.json(id, body)?;
                let arrays = refs
                    .into_iter()
                    .map(|(name, a)| Ok((name, self.array(&a)?)))
                    .collect::<Result<Vec<_>, ObjectError>>()?;
                Ok(Record::Arrays(arrays))
            }
            "MetricRecord" => Ok(Record::Metrics(
                proto::MetricRecord::decode(body).map_err(proto_error)?,
            )),
            "ConfigRecord" => Ok(Record::Config(
                proto::ConfigRecord::decode(body).map_err(proto_error)?,
            )),
            other => Err(ObjectError::Malformed {
                id: id.to_owned(),
                why: format!("a {other} where a record belongs"),
            }),
        }
    }
}

/// The content of the message `id` from its pulled `objects` (id to bytes), each checked
/// against its id; a message without content gives an empty [`RecordDict`].
pub fn inflate_message(
    id: &str,
    objects: &HashMap<String, Vec<u8>>,
) -> Result<RecordDict, ObjectError> {
    let reader = Reader { objects };
    let (children, _) = reader.get(id, "Message")?;
    let Some(content) = children.first() else {
        return Ok(RecordDict::default());
    };
    let (_, body) = reader.get(content, "RecordDict")?;
    let refs: BTreeMap<String, String> = reader.json(content, body)?;
    let records = refs
        .into_iter()
        .map(|(name, r)| Ok((name, reader.record(&r)?)))
        .collect::<Result<Vec<_>, ObjectError>>()?;
    Ok(RecordDict(records))
}

/// Every id in `tree`, children before parents.
pub fn tree_ids(tree: &proto::ObjectTree) -> Vec<String> {
    let mut out = Vec::new();
    for c in &tree.children {
        out.extend(tree_ids(c));
    }
    out.push(tree.object_id.clone());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::metric_record_value::Value;

    fn metrics(items: &[(&str, Value)]) -> proto::MetricRecord {
        proto::MetricRecord {
            items: items
                .iter()
                .map(|(k, v)| proto::metric_record::Item {
                    key: (*k).into(),
                    value: Some(proto::MetricRecordValue {
                        value: Some(v.clone()),
                    }),
                })
                .collect(),
        }
    }

    /// The ids Python's flwr 1.42.0 gives a reply holding `{"arrays": {"w": np.ones((2, 3),
    /// np.float32)}, "metrics": {"num-examples": 10, "loss": 0.5}}` (printed by deflating
    /// it there): the chunk, the array, the records and the record dict match bit for bit.
    #[test]
    fn ids_match_pythons() {
        let content = RecordDict(vec![
            (
                "arrays".into(),
                Record::Arrays(vec![("w".into(), Array::from_f32(&[2, 3], &[1.0; 6]))]),
            ),
            (
                "metrics".into(),
                Record::Metrics(metrics(&[
                    ("num-examples", Value::Sint64(10)),
                    ("loss", Value::Double(0.5)),
                ])),
            ),
        ]);
        let d = deflate_message(&proto::Metadata::default(), &content);
        let ids: Vec<&str> = d.objects.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            &ids[..5],
            [
                "4bacd6941c9454ab07faeea474c419cd340f4dc96dc11c8e57a6772849392535",
                "24befd55311a2b8170a71a430e406c80003e3002e1fca10f1977526be8cde9b8",
                "fc7b730702cfc2500e250940d9da97481c5a808c1b7995132c321a3c726aa27b",
                "774e484fca5b41799eeb0ee11484ef780f1194e442b05cbf3207d51a428f5236",
                "8b5133d954bbcb299580bc31591ae13e5dd46e2b46f436967c12d0f8ca7eb8fc",
            ]
        );
        assert_eq!(ids.len(), 6);
        assert_eq!(tree_ids(&d.tree), ids);
    }

    #[test]
    fn round_trips_and_refuses_tampering() {
        let big: Vec<f32> = (0..(MAX_CHUNK / 4 + 10)).map(|i| (i % 7) as f32).collect();
        let content = RecordDict(vec![(
            "arrays".into(),
            Record::Arrays(vec![
                ("b".into(), Array::from_f32(&[3], &[1.0, 2.0, 3.0])),
                ("big".into(), Array::from_f32(&[big.len()], &big)),
            ]),
        )]);
        let meta = proto::Metadata {
            run_id: 4,
            message_type: "train".into(),
            ..Default::default()
        };
        let d = deflate_message(&meta, &content);
        let mut objects: HashMap<String, Vec<u8>> = d.objects.iter().cloned().collect();
        let back = inflate_message(&d.id, &objects).unwrap();
        assert_eq!(back, content);
        let Record::Arrays(arrays) = &back.0[0].1 else {
            panic!()
        };
        assert_eq!(arrays[1].1.to_f32().unwrap().1, big);
        // One byte changed in a chunk: its id no longer matches.
        let chunk = d.objects[0].0.clone();
        objects.get_mut(&chunk).unwrap()[20] ^= 1;
        assert!(matches!(
            inflate_message(&d.id, &objects),
            Err(ObjectError::WrongId(_))
        ));
        objects.remove(&chunk);
        assert!(matches!(
            inflate_message(&d.id, &objects),
            Err(ObjectError::Missing(_))
        ));
    }

    /// Equal arrays (fresh LoRA Bs are all zero) are one object, one child in the tree:
    /// the SuperLink refuses a tree with duplicate children.
    #[test]
    fn equal_arrays_are_one_child() {
        let zeros = Array::from_f32(&[4, 2], &[0.0; 8]);
        let content = RecordDict(vec![(
            "arrays".into(),
            Record::Arrays(vec![("b0".into(), zeros.clone()), ("b1".into(), zeros)]),
        )]);
        let d = deflate_message(&proto::Metadata::default(), &content);
        let record = &d.tree.children[0].children[0];
        assert_eq!(record.children.len(), 1);
        let ids = tree_ids(&d.tree);
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        let objects: HashMap<String, Vec<u8>> = d.objects.into_iter().collect();
        assert_eq!(inflate_message(&d.id, &objects).unwrap(), content);
    }

    #[test]
    fn heads_are_checked() {
        let good = encode("ArrayChunk", &[], b"abc");
        assert_eq!(good, b"ArrayChunk  3\0abc");
        let id = object_id(&good);
        assert_eq!(
            decode(&id, &good).unwrap(),
            ("ArrayChunk", vec![], &b"abc"[..])
        );
        let lying = b"ArrayChunk  4\0abc".to_vec();
        assert!(decode(&object_id(&lying), &lying).is_err());
        assert!(decode(&id, b"ArrayChunk  3\0abd").is_err());
        let headless = b"no zero byte".to_vec();
        assert!(decode(&object_id(&headless), &headless).is_err());
    }
}
