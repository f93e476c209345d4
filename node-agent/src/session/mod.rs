//! The agent's side of the control stream (`AgentService.Session`): enrolment and the node
//! credential, reconnecting, and the messages that must survive both.

pub mod backoff;
pub mod credential;
pub mod outbox;
pub mod resend;
pub mod stream;
pub mod tasks;
