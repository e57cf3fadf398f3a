//! A pupil parameter store as a Flower array record and back, by name and shape: what
//! every pupil [`App`](crate::supernode::App) sends and receives.

use pupil::params::Params;

use crate::objects::{Array, Record, RecordDict};

/// Writes the message's arrays into the parameters of the same names (each shape checked;
/// `what` says in errors what an array should be, e.g. "a parameter of this model"). An
/// array the store
/// lacks is refused; parameters the message omits keep their values.
pub fn load(params: &Params, content: &RecordDict, what: &str) -> Result<(), String> {
    let arrays = content
        .arrays()
        .ok_or("the message carries no array record")?;
    for (name, array) in arrays {
        let (id, info) = params
            .find(name)
            .zip(params.infos().iter().find(|p| &p.name == name))
            .ok_or_else(|| format!("array {name:?} is not {what}"))?;
        let (shape, values) = array.to_f32().map_err(|e| e.to_string())?;
        if shape != info.shape {
            return Err(format!(
                "array {name:?} has shape {shape:?}, the parameter {:?}",
                info.shape
            ));
        }
        params.set(id, &values).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Every parameter as a named f32 array, read back in one transfer.
pub fn record(params: &Params) -> Result<Record, String> {
    let values = params.export_values().map_err(|e| e.to_string())?;
    Ok(Record::Arrays(
        values
            .into_iter()
            .map(|(name, shape, values)| {
                let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
                (name, Array::from_f32(&shape, &values))
            })
            .collect(),
    ))
}
