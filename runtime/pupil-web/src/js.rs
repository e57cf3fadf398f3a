//! The JavaScript API (wasm32 only), exported by wasm-bindgen:
//!
//! ```js
//! import init, { Classifier } from "./pupil_web.js";
//! await init();
//! const model = await Classifier.load(new Uint8Array(bytes));  // or load(bytes, "cpu")
//! model.backend;                                                // "webgpu" or "cpu"
//! const probs = await model.classify(pixels);                   // Float32Array, n * classes
//! ```

use wasm_bindgen::prelude::*;

/// A `.pupil` classifier in the page.
#[wasm_bindgen(js_name = Classifier)]
pub struct JsClassifier(crate::Classifier);

/// A runtime error as a JavaScript `Error` carrying its message.
fn js(e: pupil::Error) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen(js_class = Classifier)]
impl JsClassifier {
    /// Load the classifier in the `.pupil` file `bytes`, on the backend `backend` names
    /// (`"webgpu"` or `"cpu"`); without one, on WebGPU where the browser has an adapter,
    /// else on the CPU backend.
    pub async fn load(bytes: Vec<u8>, backend: Option<String>) -> Result<JsClassifier, JsError> {
        let backend = crate::open_backend(backend.as_deref()).await.map_err(js)?;
        crate::Classifier::load(bytes, &backend)
            .map(JsClassifier)
            .map_err(js)
    }

    /// `"webgpu"` or `"cpu"`: where the model runs.
    #[wasm_bindgen(getter)]
    pub fn backend(&self) -> String {
        crate::backend_kind(self.0.backend()).into()
    }

    /// The adapter's name and backend, or `cpu (reference backend)`.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> String {
        self.0.backend().describe()
    }

    /// The model's id in its file.
    #[wasm_bindgen(getter, js_name = modelId)]
    pub fn model_id(&self) -> String {
        self.0.model_id().into()
    }

    /// Values per example (784 for 28 x 28 digits).
    #[wasm_bindgen(getter)]
    pub fn inputs(&self) -> usize {
        self.0.inputs()
    }

    /// Number of classes.
    #[wasm_bindgen(getter)]
    pub fn classes(&self) -> usize {
        self.0.classes()
    }

    /// Class probabilities (`n * classes`, row by row) of `n` examples (`pixels`:
    /// `n * inputs` values, each pixel `byte / 255`).
    pub async fn classify(&self, pixels: Vec<f32>) -> Result<Vec<f32>, JsError> {
        self.0.classify(&pixels).await.map_err(js)
    }

    /// The logits (`n * classes`) of `n` examples.
    pub async fn logits(&self, pixels: Vec<f32>) -> Result<Vec<f32>, JsError> {
        self.0.logits(&pixels).await.map_err(js)
    }

    /// One AdamW step with learning rate `lr` on `n` labelled examples; resolves to their
    /// mean cross-entropy before the step.
    #[wasm_bindgen(js_name = trainStep)]
    pub async fn train_step(
        &mut self,
        pixels: Vec<f32>,
        labels: Vec<u32>,
        lr: f32,
    ) -> Result<f32, JsError> {
        self.0.train_step(&pixels, &labels, lr).await.map_err(js)
    }
}
