//! ratchet: a daemon that runs autonomous research on ML training recipes.
//! See ARCHITECTURE.md for the map of this crate.

pub mod actors;
pub mod allocation;
pub mod bench;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod domain;
pub mod edit;
pub mod export;
pub mod gpu;
pub mod judge;
pub mod lineage;
pub mod llm;
pub mod localmodel;
pub mod probe;
pub mod process;
pub mod propose;
pub mod provenance;
pub mod recipe;
pub mod run;
pub mod runner;
pub mod slurm;
pub mod tinylm;
pub mod workspace;
