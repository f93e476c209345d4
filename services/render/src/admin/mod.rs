//! The operator API (`flatrender.render.v1.RenderAdminService`): jobs of every tenant, their
//! chunks and attempts, and the two operator actions on a job.
//!
//! - [`search`](self): SearchRenders; [`inspect`](self): InspectRender with its statistics.
//! - [`chunks`](self): ListChunks and GetChunk (attempt history, repairs).
//! - [`requeue`](self): RequeueRender; [`fail`](self): FailRender. Both change the job and its
//!   tasks in one transaction with their events and notifications, like the queue's own
//!   transitions (`crate::queue::jobs`), and log the operator.
//!
//! Callers are checked to be platform admins by the gRPC methods (`crate::platform_admin`);
//! nothing here scopes by tenant.

mod chunks;
mod fail;
mod inspect;
mod requeue;
mod search;
