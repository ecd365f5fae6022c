//! The command handlers. Placeholder until ADD, DEL, CHECK, GC and STATUS
//! are written (`cmd/{add,del,check,gc,status}.rs`): every command answers
//! code 11, "try again later", so a runtime retries instead of recording a
//! permanent failure.

use crate::error::{CniError, CniResult, Code};
use crate::skel::{Commands, Request};
use crate::types::CniOutput;

/// The handlers `sluice` runs.
pub struct Handlers;

fn not_yet(req: &Request) -> CniError {
    CniError::new(
        Code::TryAgainLater,
        format!("{} is not implemented yet", req.command),
    )
}

impl Commands for Handlers {
    fn add(&self, req: &Request) -> CniResult<CniOutput> {
        Err(not_yet(req))
    }
    fn del(&self, req: &Request) -> CniResult<()> {
        Err(not_yet(req))
    }
    fn check(&self, req: &Request) -> CniResult<()> {
        Err(not_yet(req))
    }
    fn gc(&self, req: &Request) -> CniResult<()> {
        Err(not_yet(req))
    }
    fn status(&self, req: &Request) -> CniResult<()> {
        Err(not_yet(req))
    }
}
