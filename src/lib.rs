//! pikube: one declarative cluster file → prepared hosts → Kubernetes.
//!
//! The pipeline shows in the module list:
//! `config` (cluster file) → `ssh` (connect) → `facts` (one round trip per host)
//! → `phases` (plan/apply, dry-run guarded through `remote`) → verify.
//! `lab` builds local test nodes; it is a user feature, not test scaffolding.

pub mod artifacts;
pub mod backup;
pub mod check;
pub mod cli;
pub mod config;
pub mod distro;
pub mod down;
pub mod facts;
pub mod fleet;
pub mod health;
pub mod import;
pub mod k3s;
pub mod kubeconfig;
pub mod lab;
pub mod local;
pub mod phases;
pub mod progress;
pub mod remote;
pub mod sdcard;
pub mod ssh;
pub mod storage;
pub mod teardown;
pub mod term;
