//! What the agent's whole-system tests share: the machine as the session reports it.

use flatrender_agent::session::stream::NodeView;
use flatrender_proto::flatrender::render::v1 as pb;

/// A machine with fixed facts (those the orchestrator's scheduler wants: After Effects, RAM), a
/// plausible health sample and an empty cache.
pub struct TestNode {
    pub facts: pb::MachineFacts,
}

impl NodeView for TestNode {
    fn facts(&mut self) -> pb::MachineFacts {
        self.facts.clone()
    }

    fn health(&mut self, running_tasks: u32, slots: u32) -> pb::NodeHealthSample {
        pb::NodeHealthSample {
            recorded_at: Some(std::time::SystemTime::now().into()),
            cpu_percent: 1.0,
            memory_total_bytes: 16 << 30,
            memory_used_bytes: 1 << 30,
            running_tasks,
            slots,
            ..pb::NodeHealthSample::default()
        }
    }

    fn cache(&self) -> (Vec<pb::CachedTemplate>, u64) {
        (Vec::new(), 1 << 30)
    }

    fn evict(&mut self, _sha256: &str) -> Result<(), String> {
        Ok(())
    }
}
