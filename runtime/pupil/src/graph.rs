//! The autodiff tape. A model is written once as a forward pass over [`Var`]s; every op runs
//! eagerly (GPU work is recorded, not waited on) and, when an input needs a gradient, leaves
//! its backward rule on the tape. [`Graph::backward`] walks the tape in reverse.
//!
//! Invariants:
//! - Gradients accumulate with `+=`: into each parameter's slot of the flat gradient buffer
//!   (so several micro-batches can accumulate before one optimizer step), and into a
//!   node's running gradient when it feeds several ops.
//! - A node whose inputs need no gradient keeps no backward rule (inference costs nothing).
//! - Frozen parameters enter the tape as constants.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::ops::elementwise;
use crate::params::{ParamId, Params};
use crate::tensor::Tensor;

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(usize);

/// A backward rule: given the inputs' values, the output value and the output gradient,
/// return one gradient (or `None`) per input.
pub type BackwardFn = Box<dyn Fn(&[&Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    value: Tensor,
    inputs: Vec<Var>,
    backward: Option<BackwardFn>,
    requires_grad: bool,
    /// Where this leaf's gradient accumulates (a parameter's gradient slot).
    sink: Option<Tensor>,
}

/// The tape of one forward pass.
pub struct Graph {
    backend: Backend,
    nodes: Vec<Node>,
}

/// Gradients of the leaves created with [`Graph::input_with_grad`], after a backward pass.
pub struct Gradients {
    grads: Vec<Option<Tensor>>,
}

impl Gradients {
    /// The gradient of a leaf, if it received one.
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(Option::as_ref)
    }
}

impl Graph {
    /// An empty tape on `backend`.
    pub fn new(backend: &Backend) -> Graph {
        Graph {
            backend: backend.clone(),
            nodes: Vec::with_capacity(256),
        }
    }

    /// The backend ops run on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    fn push(
        &mut self,
        value: Tensor,
        inputs: Vec<Var>,
        backward: Option<BackwardFn>,
        requires_grad: bool,
        sink: Option<Tensor>,
    ) -> Var {
        self.nodes.push(Node {
            value,
            inputs,
            backward,
            requires_grad,
            sink,
        });
        Var(self.nodes.len() - 1)
    }

    /// A constant input (no gradient).
    pub fn input(&mut self, value: Tensor) -> Var {
        self.push(value, vec![], None, false, None)
    }

    /// An input whose gradient [`Graph::backward`] returns (for tests and input attribution).
    pub fn input_with_grad(&mut self, value: Tensor) -> Var {
        self.push(value, vec![], None, true, None)
    }

    /// A parameter: trainable ones accumulate their gradient into `params`' gradient buffer.
    pub fn param(&mut self, params: &Params, id: ParamId) -> Result<Var> {
        let value = params.value(id)?;
        let sink = if params.is_trainable(id) {
            Some(params.grad(id)?)
        } else {
            None
        };
        let requires = sink.is_some();
        Ok(self.push(value, vec![], None, requires, sink))
    }

    /// The value of a node.
    pub fn value(&self, v: Var) -> &Tensor {
        &self.nodes[v.0].value
    }

    /// Shape of a node's value.
    pub fn shape(&self, v: Var) -> &[usize] {
        self.value(v).shape()
    }

    /// Bytes of every value on the tape (inputs, parameters' views and intermediates).
    pub fn bytes(&self) -> u64 {
        self.nodes.iter().map(|n| n.value.bytes()).sum()
    }

    /// Whether gradients flow to this node.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.nodes[v.0].requires_grad
    }

    /// Append an op's output with its backward rule (dropped when no input needs a gradient).
    pub fn record(
        &mut self,
        value: Tensor,
        inputs: &[Var],
        backward: impl Fn(&[&Tensor], &Tensor, &Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let requires = inputs.iter().any(|v| self.nodes[v.0].requires_grad);
        let rule: Option<BackwardFn> = if requires {
            Some(Box::new(backward))
        } else {
            None
        };
        self.push(value, inputs.to_vec(), rule, requires, None)
    }

    /// Reverse-mode pass from the scalar `loss`: parameter gradients accumulate into their
    /// slots; the gradients of [`Graph::input_with_grad`] leaves are returned.
    pub fn backward(&mut self, loss: Var) -> Result<Gradients> {
        let seed_value = self.value(loss);
        if seed_value.numel() != 1 {
            return Err(Error::shape(
                "backward",
                format!(
                    "loss must have one element, has shape {:?}",
                    seed_value.shape()
                ),
            ));
        }
        let mut grads: Vec<Option<Tensor>> = vec![None; self.nodes.len()];
        grads[loss.0] = Some(Tensor::from_slice(
            &self.backend,
            seed_value.shape(),
            &[1.0],
        )?);
        for i in (0..=loss.0).rev() {
            let node = &self.nodes[i];
            if !node.requires_grad {
                continue;
            }
            let Some(dy) = grads[i].take() else { continue };
            if let Some(sink) = &node.sink {
                elementwise::axpy(sink, 1.0, &dy)?;
            }
            let Some(rule) = &node.backward else {
                grads[i] = Some(dy); // a leaf: keep for the caller
                continue;
            };
            let inputs: Vec<&Tensor> = node.inputs.iter().map(|v| &self.nodes[v.0].value).collect();
            let dxs = rule(&inputs, &node.value, &dy)?;
            for (v, dx) in node.inputs.iter().zip(dxs) {
                let (Some(dx), true) = (dx, self.nodes[v.0].requires_grad) else {
                    continue;
                };
                let expected = self.nodes[v.0].value.shape();
                if dx.numel() != self.nodes[v.0].value.numel() {
                    return Err(Error::shape(
                        "backward",
                        format!(
                            "rule of node {i} gave {:?} for an input of {expected:?}",
                            dx.shape()
                        ),
                    ));
                }
                grads[v.0] = Some(match grads[v.0].take() {
                    None => dx,
                    Some(acc) => elementwise::add(&acc, &dx.reshape(acc.shape())?)?,
                });
            }
        }
        Ok(Gradients { grads })
    }
}

/// The ops of [`crate::ops`] on the tape. Other op families add their own `impl Graph`
/// next to their kernels.
mod basic {
    use super::{Graph, Var};
    use crate::error::Result;
    use crate::ops::activation::{self, Activation};
    use crate::ops::elementwise::{self, BinaryOp};
    use crate::ops::{loss, matmul, reduce};

    impl Graph {
        /// `op(a) op(b)` (see [`matmul::matmul_t`]).
        pub fn matmul_t(&mut self, a: Var, b: Var, ta: bool, tb: bool) -> Result<Var> {
            let y = matmul::matmul_t(self.value(a), self.value(b), ta, tb)?;
            Ok(self.record(y, &[a, b], move |i, _, dy| {
                let (da, db) = matmul::matmul_backward(i[0], i[1], ta, tb, dy)?;
                Ok(vec![Some(da), Some(db)])
            }))
        }

        /// `a b`.
        pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
            self.matmul_t(a, b, false, false)
        }

        /// `a op b` with broadcasting.
        pub fn binary(&mut self, op: BinaryOp, a: Var, b: Var) -> Result<Var> {
            let y = elementwise::binary(op, self.value(a), self.value(b))?;
            Ok(self.record(y, &[a, b], move |i, _, dy| {
                let (da, db) = elementwise::binary_backward(op, i[0], i[1], dy)?;
                Ok(vec![Some(da), Some(db)])
            }))
        }

        /// `a + b`.
        pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Add, a, b)
        }

        /// `a - b`.
        pub fn sub(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Sub, a, b)
        }

        /// `a * b`.
        pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Mul, a, b)
        }

        /// `a / b`.
        pub fn div(&mut self, a: Var, b: Var) -> Result<Var> {
            self.binary(BinaryOp::Div, a, b)
        }

        /// `alpha * x`.
        pub fn scale(&mut self, x: Var, alpha: f32) -> Result<Var> {
            let y = elementwise::scale(self.value(x), alpha)?;
            Ok(self.record(y, &[x], move |_, _, dy| {
                Ok(vec![Some(elementwise::scale(dy, alpha)?)])
            }))
        }

        /// The same values with another shape.
        pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
            let y = self.value(x).reshape(shape)?;
            Ok(self.record(y, &[x], |i, _, dy| {
                Ok(vec![Some(dy.reshape(i[0].shape())?)])
            }))
        }

        /// A pointwise activation.
        pub fn activate(&mut self, f: Activation, x: Var) -> Result<Var> {
            let y = activation::activate(f, self.value(x))?;
            Ok(self.record(y, &[x], move |i, _, dy| {
                Ok(vec![Some(activation::activate_backward(f, i[0], dy)?)])
            }))
        }

        /// ReLU.
        pub fn relu(&mut self, x: Var) -> Result<Var> {
            self.activate(Activation::Relu, x)
        }

        /// GELU (erf).
        pub fn gelu(&mut self, x: Var) -> Result<Var> {
            self.activate(Activation::Gelu, x)
        }

        /// SiLU.
        pub fn silu(&mut self, x: Var) -> Result<Var> {
            self.activate(Activation::Silu, x)
        }

        /// Sum over the last axis.
        pub fn sum_last(&mut self, x: Var) -> Result<Var> {
            let y = reduce::sum_last(self.value(x))?;
            Ok(self.record(y, &[x], |i, _, dy| {
                let cols = i[0].shape().last().copied().unwrap_or(1);
                Ok(vec![Some(reduce::expand_rows(
                    dy,
                    i[0].shape(),
                    cols,
                    1.0,
                )?)])
            }))
        }

        /// Sum of all elements, `[1]`.
        pub fn sum_all(&mut self, x: Var) -> Result<Var> {
            let y = reduce::sum_all(self.value(x))?;
            Ok(self.record(y, &[x], |i, _, dy| {
                Ok(vec![Some(reduce::expand_rows(
                    dy,
                    i[0].shape(),
                    i[0].numel(),
                    1.0,
                )?)])
            }))
        }

        /// Mean of all elements, `[1]`.
        pub fn mean_all(&mut self, x: Var) -> Result<Var> {
            let y = reduce::mean_all(self.value(x))?;
            Ok(self.record(y, &[x], |i, _, dy| {
                let n = i[0].numel();
                Ok(vec![Some(reduce::expand_rows(
                    dy,
                    i[0].shape(),
                    n,
                    1.0 / n as f32,
                )?)])
            }))
        }

        /// Mean cross-entropy of `logits` against integer `labels` (a constant input).
        pub fn cross_entropy(&mut self, logits: Var, labels: Var) -> Result<Var> {
            let y = loss::cross_entropy(self.value(logits), self.value(labels))?;
            Ok(self.record(y, &[logits, labels], |i, _, dy| {
                Ok(vec![
                    Some(loss::cross_entropy_backward(i[0], i[1], dy)?),
                    None,
                ])
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::{assert_close, gpu, random};

    /// A two-layer expression's input gradient equals the finite difference of its loss,
    /// on both backends, exercising fan-out accumulation (x is used twice).
    #[test]
    fn tape_gradients_match_finite_differences() {
        for backend in [Backend::Cpu, gpu()] {
            let xv = random(12, 1, 1.0);
            let wv = random(12, 2, 1.0);
            let loss_of = |x: &[f32], want_grad: bool| {
                let mut g = Graph::new(&backend);
                let xt = Tensor::from_slice(&backend, &[3, 4], x).unwrap();
                let x = if want_grad {
                    g.input_with_grad(xt)
                } else {
                    g.input(xt)
                };
                let w = g.input(Tensor::from_slice(&backend, &[4, 3], &wv).unwrap());
                let h = g.matmul(x, w).unwrap();
                let h = g.gelu(h).unwrap();
                let xs = g.sum_last(x).unwrap();
                let xs = g.reshape(xs, &[3, 1]).unwrap();
                let y = g.mul(h, xs).unwrap();
                let l = g.mean_all(y).unwrap();
                let value = g.value(l).item().unwrap();
                let grads = if want_grad {
                    Some(g.backward(l).unwrap().get(x).unwrap().to_vec().unwrap())
                } else {
                    None
                };
                (value, grads)
            };
            let (_, grad) = loss_of(&xv, true);
            crate::ops::testing::check_gradient(
                "tape",
                &xv,
                &grad.unwrap(),
                |x| loss_of(x, false).0 as f64,
                2e-2,
            );
        }
    }

    #[test]
    fn constants_keep_no_backward_rule() {
        let b = Backend::Cpu;
        let mut g = Graph::new(&b);
        let x = g.input(Tensor::from_slice(&b, &[2], &[1.0, -1.0]).unwrap());
        let y = g.relu(x).unwrap();
        assert!(!g.requires_grad(y));
        let r = g.backward(y);
        assert!(r.is_err(), "loss of two elements is refused");
        let s = g.sum_all(y).unwrap();
        let grads = g.backward(s).unwrap();
        assert!(grads.get(x).is_none());
        assert_close(
            "value",
            g.value(s),
            &Tensor::scalar(&b, 1.0).unwrap(),
            0.0,
            0.0,
        );
    }
}
