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
        "layout" => include_str!("../../../shaders/layout.wgsl"),
        "softmax" => include_str!("../../../shaders/softmax.wgsl"),
        "norm" => include_str!("../../../shaders/norm.wgsl"),
        "conv" => include_str!("../../../shaders/conv.wgsl"),
        "pool" => include_str!("../../../shaders/pool.wgsl"),
        "embedding" => include_str!("../../../shaders/embedding.wgsl"),
        "attention" => include_str!("../../../shaders/attention.wgsl"),
        "rope" => include_str!("../../../shaders/rope.wgsl"),
        "distill" => include_str!("../../../shaders/distill.wgsl"),
        "qmatmul" => include_str!("../../../shaders/qmatmul.wgsl"),
        _ => return None,
    })
}
