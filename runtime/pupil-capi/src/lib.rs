//! pupil's C ABI: the small API of the browser package ([`pupil_web::Classifier`]) for
//! native apps in Swift, Kotlin or C++: load a `.pupil` classifier, classify, take
//! training steps on examples the app collects, and queue the refined model as a signed
//! update in a device folder's outbox (which `pupil sync push`, or the app through
//! pupil-sync, sends).
//!
//! Every function returns 0 (or a non-null pointer) on success and -1 (or null) on
//! failure, with the reason in [`pupil_last_error`]; none unwinds a panic into C. Strings
//! are NUL-terminated UTF-8. The header is `include/pupil.h` (cbindgen).

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use pupil_sync::client::{DeltaEncoding, DeviceDir, UpdateOptions};
use pupil_web::Classifier;

/// A loaded classifier; free it with [`pupil_classifier_free`].
pub struct PupilClassifier {
    inner: Classifier,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

type Failure = Box<dyn std::error::Error>;

/// Runs `f`, turning an error or a panic into `fallback` and the thread's last error.
fn guard<T>(fallback: T, f: impl FnOnce() -> Result<T, Failure>) -> T {
    let message = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => return value,
        Ok(Err(e)) => e.to_string(),
        Err(panic) => format!(
            "internal error (a panic: {}); please report it",
            panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        ),
    };
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = message);
    fallback
}

/// The string at `p`, which must be null or NUL-terminated.
unsafe fn text<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(p) };
    Ok(Some(
        s.to_str().map_err(|_| format!("{what} is not UTF-8"))?,
    ))
}

/// The string at `p`, which must not be null.
unsafe fn required<'a>(p: *const c_char, what: &str) -> Result<&'a str, Failure> {
    // SAFETY: as for `text`.
    unsafe { text(p, what) }?.ok_or_else(|| format!("{what} is null").into())
}

/// `len` values at `p`, which must not be null unless `len` is 0.
unsafe fn slice<'a, T>(p: *const T, len: usize, what: &str) -> Result<&'a [T], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(format!("{what} is null").into());
    }
    // SAFETY: the caller passes `len` readable values.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// The classifier at `c`, which must not be null.
unsafe fn classifier<'a>(c: *const PupilClassifier) -> Result<&'a PupilClassifier, Failure> {
    // SAFETY: the caller passes a pointer from `pupil_classifier_load` or null.
    unsafe { c.as_ref() }.ok_or_else(|| "the classifier is null".into())
}

/// The reason the last failing call on this thread failed ("" if none did). The string
/// stays valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn pupil_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Loads the `.pupil` classifier at `path` on `adapter`: null for the default (the best
/// GPU adapter, else the CPU backend), `"cpu"`, or part of an adapter's name. Returns null
/// on failure.
///
/// # Safety
/// `path` and `adapter` are null or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn pupil_classifier_load(
    path: *const c_char,
    adapter: *const c_char,
) -> *mut PupilClassifier {
    guard(std::ptr::null_mut(), || {
        // SAFETY: forwarded from the caller.
        let (path, adapter) = unsafe { (required(path, "path")?, text(adapter, "adapter")?) };
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let backend = pupil::Backend::auto(adapter)?;
        let inner = Classifier::load(bytes, &backend)?;
        Ok(Box::into_raw(Box::new(PupilClassifier { inner })))
    })
}

/// Frees a classifier (null is ignored).
///
/// # Safety
/// `c` is null or from [`pupil_classifier_load`], and not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn pupil_classifier_free(c: *mut PupilClassifier) {
    if !c.is_null() {
        // SAFETY: `c` came from `Box::into_raw` in `pupil_classifier_load`.
        drop(unsafe { Box::from_raw(c) });
    }
}

/// Values per example (784 for 28 x 28 digits); 0 for a null classifier.
///
/// # Safety
/// `c` is null or a live classifier.
#[no_mangle]
pub unsafe extern "C" fn pupil_classifier_inputs(c: *const PupilClassifier) -> usize {
    // SAFETY: forwarded from the caller.
    guard(0, || Ok(unsafe { classifier(c) }?.inner.inputs()))
}

/// Number of classes; 0 for a null classifier.
///
/// # Safety
/// `c` is null or a live classifier.
#[no_mangle]
pub unsafe extern "C" fn pupil_classifier_classes(c: *const PupilClassifier) -> usize {
    // SAFETY: forwarded from the caller.
    guard(0, || Ok(unsafe { classifier(c) }?.inner.classes()))
}

/// Writes the class probabilities of `n` examples (`values`: `n * inputs` floats, pixels
/// as `byte / 255`) to `probabilities` (`out_len` must be `n * classes`).
///
/// # Safety
/// `values` holds `n_values` floats and `probabilities` room for `out_len`.
#[no_mangle]
pub unsafe extern "C" fn pupil_classifier_classify(
    c: *const PupilClassifier,
    values: *const f32,
    n_values: usize,
    probabilities: *mut f32,
    out_len: usize,
) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let (c, values) = unsafe { (classifier(c)?, slice(values, n_values, "values")?) };
        let probs = pollster::block_on(c.inner.classify(values))?;
        if probs.len() != out_len || probabilities.is_null() {
            return Err(format!(
                "the output holds {out_len} floats but the probabilities are {}",
                probs.len()
            )
            .into());
        }
        // SAFETY: the caller gives room for `out_len` floats.
        unsafe { std::ptr::copy_nonoverlapping(probs.as_ptr(), probabilities, out_len) };
        Ok(0)
    })
}

/// One AdamW step at learning rate `lr` on `n` labelled examples (`values`: `n * inputs`
/// floats, `labels`: `n` classes); writes their mean cross-entropy before the step to
/// `loss` (when it is not null).
///
/// # Safety
/// `c` is a live classifier; `values` holds `n_values` floats, `labels` `n_labels`.
#[no_mangle]
pub unsafe extern "C" fn pupil_classifier_train_step(
    c: *mut PupilClassifier,
    values: *const f32,
    n_values: usize,
    labels: *const u32,
    n_labels: usize,
    lr: f32,
    loss: *mut f32,
) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let c = unsafe { c.as_mut() }.ok_or("the classifier is null")?;
        // SAFETY: forwarded from the caller.
        let (values, labels) = unsafe {
            (
                slice(values, n_values, "values")?,
                slice(labels, n_labels, "labels")?,
            )
        };
        let l = pollster::block_on(c.inner.train_step(values, labels, lr))?;
        if !loss.is_null() {
            // SAFETY: the caller passes a writable float or null.
            unsafe { *loss = l };
        }
        Ok(0)
    })
}

/// Makes `dir` a device folder for `device_id` (the id the device registers with the
/// server, e.g. by `pupil sync register --dir DIR --device-id ID`), creating its key on
/// first use.
///
/// # Safety
/// `dir` and `device_id` are NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn pupil_device_init(dir: *const c_char, device_id: *const c_char) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let (dir, id) = unsafe { (required(dir, "dir")?, required(device_id, "device_id")?) };
        let device = DeviceDir::open(&PathBuf::from(dir))?;
        device.key()?;
        device.set_device_id(id)?;
        Ok(0)
    })
}

/// Builds the update from the file the classifier was loaded from to its current weights
/// (int8 deltas of what changed, counting for `num_examples` examples), signs it with the
/// device's key and queues it in the outbox of device folder `dir`; writes its sequence
/// number to `seq` (when it is not null).
///
/// # Safety
/// `c` is a live classifier; `dir` a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn pupil_classifier_queue_update(
    c: *const PupilClassifier,
    dir: *const c_char,
    num_examples: u64,
    seq: *mut u64,
) -> i32 {
    guard(-1, || {
        // SAFETY: forwarded from the caller.
        let (c, dir) = unsafe { (classifier(c)?, required(dir, "dir")?) };
        let options = UpdateOptions {
            device_id: "",
            encoding: DeltaEncoding::Int8,
            num_examples,
            metrics: &[],
            personal: &[],
        };
        let queued = DeviceDir::open(&PathBuf::from(dir))?.queue_update(
            c.inner.file(),
            &c.inner.refined()?,
            &options,
        )?;
        if !seq.is_null() {
            // SAFETY: the caller passes a writable u64 or null.
            unsafe { *seq = queued.seq };
        }
        Ok(0)
    })
}
