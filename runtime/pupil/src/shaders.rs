//! Every WGSL kernel of the runtime, compiled into the binary from the top-level `shaders/`.

/// Source of the named shader file (`shaders/<name>.wgsl`).
pub(crate) fn source(name: &str) -> Option<&'static str> {
    Some(match name {
        "matmul" => include_str!("../../../shaders/matmul.wgsl"),
        "elementwise" => include_str!("../../../shaders/elementwise.wgsl"),
        "sum_to" => include_str!("../../../shaders/sum_to.wgsl"),
        "activation" => include_str!("../../../shaders/activation.wgsl"),
        "reduce" => include_str!("../../../shaders/reduce.wgsl"),
        "loss" => include_str!("../../../shaders/loss.wgsl"),
        "optim" => include_str!("../../../shaders/optim.wgsl"),
        _ => return None,
    })
}
