//! `wdml._wdml`: a WDML device whose model is a Python object.
//!
//! Everything but the model is the Rust node runtime, unchanged: the join, the data
//! split and the shard, each round's public batch, the encoded exchange over the shaped
//! gRPC streams, the radio's accounting, the reports and the liveness. The model sits
//! behind [`wdml_node::learn::Learn`], which [`PyLearner`] implements by calling the
//! object's `predict` and `train_step` (the package's `wdml.run` documents them).
//!
//! Arrays cross as numpy: images, labels and targets are handed over as arrays that
//! own the runtime's buffers (no copy on the way in); the logits come back as one
//! float32 array, copied once into the message.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use candle_core::{DType, Tensor};
use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use wdml_node::learn::{Evaluation, Learn, StepLosses, evaluation_of};
use wdml_node::model::ModelSpec;
use wdml_node::plan::RunPlan;
use wdml_node::{Error, ExternalModel, Outcome, seed};
use wdml_transport::{Identity, Security};

/// A model that is a Python object, as the node runtime sees it.
struct PyLearner {
    model: Arc<Py<PyAny>>,
    parameters: usize,
    /// Values per sample and classes of the run's data.
    values: usize,
    classes: usize,
    /// Skipped, as Candle's learner skips it, when the run's λ is 0.
    distill: bool,
    /// Stays 0: a Python model's FLOPs are not known from its shapes.
    flops: Arc<AtomicU64>,
}

/// A Python exception as the node's error: its one-line form for the report to the
/// coordinator, its traceback in this device's log.
fn model_error(py: Python<'_>, method: &str, err: PyErr) -> Error {
    let traceback = err.traceback(py).and_then(|tb| tb.format().ok()).unwrap_or_default();
    tracing::error!("the model's `{method}` raised {err}\n{traceback}");
    Error::Model {
        method: method.into(),
        reason: err.to_string(),
    }
}

fn unusable(method: &str, reason: impl Into<String>) -> Error {
    Error::Model {
        method: method.into(),
        reason: reason.into(),
    }
}

/// `tensor` (row-major f32) as a numpy array of `shape`, owning the values.
fn array_f32<'py>(py: Python<'py>, tensor: &Tensor, shape: &[usize]) -> wdml_node::Result<Bound<'py, PyAny>> {
    let values = tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let array = values.into_pyarray(py);
    Ok(array
        .reshape(shape)
        .map_err(|e| unusable("numpy", e.to_string()))?
        .into_any())
}

impl PyLearner {
    /// Calls `method` with `args`; an exception is the round's error.
    fn call<'py>(
        &self,
        py: Python<'py>,
        method: &str,
        args: impl pyo3::call::PyCallArgs<'py>,
    ) -> wdml_node::Result<Bound<'py, PyAny>> {
        self.model
            .bind(py)
            .call_method1(method, args)
            .map_err(|e| model_error(py, method, e))
    }

    /// The logits of `images`, checked: float32 `[rows, classes]`, every value finite.
    fn predict(&self, py: Python<'_>, images: &Tensor) -> wdml_node::Result<Vec<f32>> {
        let (rows, classes) = (images.dim(0)?, self.classes);
        let array = array_f32(py, images, &[rows, self.values])?;
        let out = self.call(py, "predict", (array,))?;
        let logits: PyReadonlyArray2<f32> = out.extract().map_err(|_| {
            unusable(
                "predict",
                format!(
                    "returned {}, not a float32 array of shape ({rows}, {classes})",
                    out.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
                ),
            )
        })?;
        if logits.shape() != [rows, classes] {
            return Err(unusable(
                "predict",
                format!(
                    "returned shape {:?} for {rows} images; expected ({rows}, {classes})",
                    logits.shape()
                ),
            ));
        }
        let values = match logits.as_slice() {
            Ok(values) => values.to_vec(),
            // A strided view (a transpose, a slice): read it element by element.
            Err(_) => logits.as_array().iter().copied().collect(),
        };
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(unusable("predict", format!("returned a non-finite logit ({bad})")));
        }
        Ok(values)
    }
}

impl Learn for PyLearner {
    fn parameter_count(&self) -> usize {
        self.parameters
    }

    fn flops(&self) -> Arc<AtomicU64> {
        self.flops.clone()
    }

    fn logits_vec(&self, images: &Tensor) -> wdml_node::Result<Vec<f32>> {
        Python::with_gil(|py| self.predict(py, images))
    }

    fn train_step_weighted(
        &mut self,
        images: &Tensor,
        labels: &Tensor,
        distill: Option<(&Tensor, &Tensor)>,
        weights: Option<&Tensor>,
    ) -> wdml_node::Result<StepLosses> {
        let distill = distill.filter(|_| self.distill);
        Python::with_gil(|py| {
            let rows = images.dim(0)?;
            let x = array_f32(py, images, &[rows, self.values])?;
            // int64: what torch's cross-entropy indexes with.
            let y: Vec<i64> = labels
                .to_dtype(DType::U32)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(i64::from)
                .collect();
            let y = y.into_pyarray(py).into_any();
            let none = || py.None().into_bound(py);
            let (public, targets, w) = match distill {
                Some((public, targets)) => {
                    let p = public.dim(0)?;
                    let w = match weights {
                        Some(w) => array_f32(py, w, &[p])?,
                        None => none(),
                    };
                    (
                        array_f32(py, public, &[p, self.values])?,
                        array_f32(py, targets, &[p, self.classes])?,
                        w,
                    )
                }
                None => (none(), none(), none()),
            };
            let out = self.call(py, "train_step", (x, y, public, targets, w))?;
            let (ce, kl, total): (f64, f64, f64) = out.extract().map_err(|_| {
                unusable(
                    "train_step",
                    "must return three numbers: (cross-entropy, KL, total loss)",
                )
            })?;
            if ![ce, kl, total].iter().all(|v| v.is_finite()) {
                return Err(unusable(
                    "train_step",
                    format!("returned a non-finite loss (ce {ce}, kl {kl}, total {total})"),
                ));
            }
            Ok(StepLosses {
                ce: ce as f32,
                kl: kl as f32,
                total: total as f32,
            })
        })
    }

    fn evaluate(&self, images: &Tensor, labels: &Tensor, batch: usize) -> wdml_node::Result<Evaluation> {
        let rows = images.dim(0)?;
        let labels = labels.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        let mut logits = Vec::with_capacity(rows * self.classes);
        Python::with_gil(|py| -> wdml_node::Result<()> {
            for start in (0..rows).step_by(batch.max(1)) {
                let len = batch.max(1).min(rows - start);
                logits.extend(self.predict(py, &images.narrow(0, start, len)?)?);
            }
            Ok(())
        })?;
        evaluation_of(&logits, &labels, self.classes)
    }
}

/// What the model's optional `setup` is told, once the run's settings are known.
fn settings<'py>(py: Python<'py>, plan: &RunPlan, id: u32) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("run_id", &plan.run_id)?;
    d.set_item("node_id", id)?;
    d.set_item("nodes", plan.nodes)?;
    d.set_item("rounds", plan.rounds)?;
    d.set_item("algorithm", plan.algorithm.name())?;
    d.set_item("seed", plan.seed)?;
    // The seed a Rust node of this id initialises its model from (docs/determinism.md).
    d.set_item("model_seed", seed::derive(plan.seed, &[seed::MODEL, u64::from(id)]))?;
    d.set_item("learning_rate", plan.learner.learning_rate)?;
    d.set_item("temperature", plan.learner.temperature)?;
    d.set_item("kl_weight", plan.learner.kl_weight)?;
    d.set_item("local_steps", plan.local_steps)?;
    d.set_item("batch_size", plan.batch_size)?;
    d.set_item("public_batch", plan.public_batch)?;
    d.set_item("distill_batch", plan.distill_batch)?;
    // The run's data: every array a method receives is (rows, values), each row a
    // sample of `sample_shape` ([C, H, W] or [D]) row-major (reshape it: a view).
    let shape: Vec<usize> = plan.spec.shape.iter().map(|&d| d as usize).collect();
    d.set_item("classes", plan.spec.classes)?;
    d.set_item("sample_shape", shape.clone())?;
    match plan.spec.image() {
        Some([_, h, w]) => d.set_item("image_shape", (h, w))?,
        None => d.set_item("image_shape", py.None())?,
    }
    Ok(d)
}

/// Runs one device of a WDML run with `model`, until the run is over; returns whether
/// the run finished (every round closed). See `wdml.run` for the arguments.
#[pyfunction]
#[pyo3(signature = (model, *, name, parameters, node_id, coordinator, listen, advertise=None, tls_dir=None, insecure=false, data_dir=None, coordinator_timeout_s=60))]
#[allow(clippy::too_many_arguments)]
fn run_device(
    py: Python<'_>,
    model: Py<PyAny>,
    name: String,
    parameters: u64,
    node_id: u32,
    coordinator: String,
    listen: String,
    advertise: Option<String>,
    tls_dir: Option<PathBuf>,
    insecure: bool,
    data_dir: Option<PathBuf>,
    coordinator_timeout_s: u64,
) -> PyResult<bool> {
    init_tracing();
    let spec: ModelSpec = format!("ext:{name}")
        .parse()
        .map_err(|e| PyValueError::new_err(format!("name: {e}")))?;
    let listen: SocketAddr = listen
        .parse()
        .map_err(|_| PyValueError::new_err(format!("listen: {listen:?} is not host:port, e.g. 127.0.0.1:0")))?;
    let security = match (tls_dir, insecure) {
        (Some(_), true) => {
            return Err(PyValueError::new_err(
                "tls_dir and insecure contradict each other: give one",
            ));
        }
        (Some(dir), false) => Security::from_dir(&dir, Identity::Node(node_id))
            .map_err(|e| PyValueError::new_err(format!("tls_dir: {e}")))?,
        (None, true) => {
            wdml_transport::warn_insecure(&format!("this device (node {node_id})"));
            Security::Insecure
        }
        (None, false) => {
            return Err(PyValueError::new_err(
                "connections use mutual TLS: give tls_dir (the run's certificates, with ca.pem and \
                 node-<id>.pem / .key), or insecure=True to run without (debugging only)",
            ));
        }
    };
    let model = Arc::new(model);
    let build = {
        let model = model.clone();
        move |plan: &RunPlan, id: u32| -> wdml_node::Result<Box<dyn Learn>> {
            Python::with_gil(|py| -> wdml_node::Result<()> {
                let object = model.bind(py);
                if object.hasattr("setup").map_err(|e| model_error(py, "setup", e))? {
                    let settings = settings(py, plan, id).map_err(|e| model_error(py, "setup", e))?;
                    object
                        .call_method1("setup", (settings,))
                        .map_err(|e| model_error(py, "setup", e))?;
                }
                Ok(())
            })?;
            Ok(Box::new(PyLearner {
                model: model.clone(),
                parameters: parameters as usize,
                values: plan.spec.sample_len(),
                classes: plan.spec.classes as usize,
                distill: plan.learner.kl_weight > 0.0,
                flops: Arc::default(),
            }))
        }
    };
    let config = wdml_node::Config {
        id: node_id,
        model: Some(spec),
        coordinator,
        advertise,
        data_dir,
        coordinator_timeout: Duration::from_secs(coordinator_timeout_s),
        security,
        state_dir: None,
        panic_at_round: None,
        external: Some(ExternalModel {
            parameters,
            build: Arc::new(build),
        }),
    };
    // The runtime runs with the interpreter released; the model's calls take it back.
    let outcome = py.allow_threads(|| -> Result<Outcome, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))?;
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("listen: cannot listen on {listen}: {e}"))?;
            wdml_node::run(config, listener, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        })
    });
    match outcome {
        Ok(Outcome::Complete(complete)) => {
            if !complete.finished {
                tracing::warn!("the run ended early: {}", complete.reason);
            }
            Ok(complete.finished)
        }
        Ok(Outcome::Shutdown) => Ok(false),
        Ok(Outcome::Left(reason)) => {
            tracing::warn!("left the run: {reason}");
            Ok(false)
        }
        Err(e) => Err(PyRuntimeError::new_err(e)),
    }
}

/// SIGINT or SIGTERM: the device leaves the run (tells the coordinator) and returns.
async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The same log lines as `wdml node` writes, to stderr (RUST_LOG picks the level).
fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second run in one interpreter keeps the first one's subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

#[pymodule]
fn _wdml(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run_device, m)?)?;
    m.add("PROTOCOL_VERSION", wdml_proto::PROTOCOL_VERSION)?;
    m.add("DATA_CONTRACT", wdml_proto::DATA_CONTRACT)?;
    // Fashion-MNIST's, the embedded dataset's (a run's own are in `setup`'s settings).
    m.add("CLASSES", 10)?;
    m.add("IMAGE_SIDE", 28)?;
    Ok(())
}
