//! Architecture configuration: a bounded list of typed key/value pairs, so every
//! architecture fits without changing the format.

use core::fmt;

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Most entries in a model's architecture config.
pub const MAX_CONFIG_ENTRIES: usize = 32;
/// Longest config key in bytes.
pub const MAX_KEY_LEN: usize = 32;
/// Longest string config value in bytes.
pub const MAX_STR_LEN: usize = 64;
/// Most integers in one list config value.
pub const MAX_INTS: usize = 16;

/// One architecture config value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ConfigValue {
    /// An integer, e.g. a hidden size.
    Int(i64),
    /// A float, e.g. a norm epsilon.
    Float(f64),
    /// A short string, e.g. an activation name.
    Str(String<MAX_STR_LEN>),
    /// A short list of integers, e.g. layer widths.
    Ints(Vec<i64, MAX_INTS>),
}

impl ConfigValue {
    /// The value as an integer, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The value as a float; integers convert.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Self::Float(v) => Some(*v),
            Self::Int(v) => Some(*v as f64),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a list of integers, if it is one.
    pub fn as_ints(&self) -> Option<&[i64]> {
        match self {
            Self::Ints(v) => Some(v),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(v) => write!(f, "{v}"),
            Self::Float(v) => write!(f, "{v:?}"),
            Self::Str(v) => write!(f, "{:?}", v.as_str()),
            Self::Ints(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// One named architecture config value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigEntry {
    /// The key, e.g. `hidden`.
    pub key: String<MAX_KEY_LEN>,
    /// The value.
    pub value: ConfigValue,
}
