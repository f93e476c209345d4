//! Placement: which connected node takes which claimed task. Pure, so every rule is tested
//! without a database.
//!
//! A task goes only to a node with a free slot that may get work (never DRAINING; QUARANTINED
//! only for probes), that it is pinned to if pinned, that is not excluded from its job, and that
//! has what it needs (an After Effects version at least the minimum, every required tag, enough
//! RAM, a GPU, ffmpeg for assembly). Among those, a node the task should avoid (a frame repair
//! avoids the node whose frames were bad) is left out while another has a free slot: a soft
//! preference, so a one-node farm still repairs. Then a node holding the template in its cache
//! comes first, then the node with the most free slots (spreading work).

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashSet};

use uuid::Uuid;

use crate::model::Lane;

/// Whether the scheduler may give a node work (`nodes.state` and the agent's own drain).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminState {
    /// Receives work.
    Active,
    /// Receives nothing new.
    Draining,
    /// Receives probes only.
    Quarantined,
}

impl AdminState {
    /// The scheduling state of a stored `nodes.state` (online and offline nodes are active).
    pub fn from_db(state: &str) -> Self {
        match state {
            "draining" => Self::Draining,
            "quarantined" => Self::Quarantined,
            _ => Self::Active,
        }
    }
}

/// A connected node with free slots, as placement sees it.
#[derive(Clone, Debug)]
pub struct NodeOffer {
    /// Node id.
    pub node_id: Uuid,
    /// The connection epoch this replica holds for it (the claim is fenced by it).
    pub connection_epoch: i64,
    /// Node name (for the attempt rows).
    pub name: String,
    /// Slots it can take now.
    pub free_slots: u32,
    /// Scheduling state.
    pub admin: AdminState,
    /// Effective tags.
    pub tags: BTreeSet<String>,
    /// Installed After Effects versions.
    pub ae_versions: Vec<String>,
    /// Physical memory.
    pub ram_bytes: i64,
    /// Whether it has a GPU.
    pub has_gpu: bool,
    /// Whether it has ffmpeg.
    pub has_ffmpeg: bool,
    /// Template bundles in its cache (SHA-256).
    pub cached: HashSet<[u8; 32]>,
}

/// A queued task, as placement sees it.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// Task id.
    pub id: Uuid,
    /// Its lane.
    pub lane: Lane,
    /// Template bundle digest (cache affinity).
    pub template_sha256: Option<[u8; 32]>,
    /// Lowest After Effects version it accepts.
    pub min_ae_version: Option<String>,
    /// Tags a node must carry.
    pub required_tags: Vec<String>,
    /// Least RAM.
    pub min_ram_bytes: Option<i64>,
    /// Whether it needs a GPU.
    pub needs_gpu: bool,
    /// The only node that may take it.
    pub pinned_node_id: Option<Uuid>,
    /// Nodes excluded from it (they failed a task of its job).
    pub excluded: HashSet<Uuid>,
    /// A node it should go to only when no other eligible node has a free slot in this claim
    /// (a repair: the node that made the bad frames).
    pub avoid_node: Option<Uuid>,
}

/// Whether `node` may take `task` at all (slots aside).
pub fn eligible(task: &Candidate, node: &NodeOffer) -> bool {
    let admitted = match node.admin {
        AdminState::Active => true,
        AdminState::Draining => false,
        AdminState::Quarantined => task.lane == Lane::Probe,
    };
    admitted
        && task.pinned_node_id.is_none_or(|pinned| pinned == node.node_id)
        && !task.excluded.contains(&node.node_id)
        && task.required_tags.iter().all(|tag| node.tags.contains(tag))
        && task.min_ram_bytes.is_none_or(|ram| node.ram_bytes >= ram)
        && (!task.needs_gpu || node.has_gpu)
        && if task.lane == Lane::Assemble {
            node.has_ffmpeg
        } else {
            // Everything else runs After Effects.
            match &task.min_ae_version {
                Some(min) => node.ae_versions.iter().any(|v| compare_versions(v, min) != Ordering::Less),
                None => !node.ae_versions.is_empty(),
            }
        }
}

/// Places `tasks` (in dispatch order) on `nodes`: `(task index, node index)` pairs, never more
/// per node than its free slots. Tasks no node can take now are left out.
pub fn place(tasks: &[Candidate], nodes: &[NodeOffer]) -> Vec<(usize, usize)> {
    let mut free: Vec<u32> = nodes.iter().map(|n| n.free_slots).collect();
    let mut placed = Vec::new();
    for (t, task) in tasks.iter().enumerate() {
        if free.iter().all(|f| *f == 0) {
            break;
        }
        let open = |n: usize, node: &NodeOffer| free[n] > 0 && eligible(task, node);
        // The node to avoid is left out only while another can take the task now.
        let avoid = task
            .avoid_node
            .filter(|avoid| nodes.iter().enumerate().any(|(n, node)| node.node_id != *avoid && open(n, node)));
        let best = nodes
            .iter()
            .enumerate()
            .filter(|(n, node)| open(*n, node) && avoid != Some(node.node_id))
            // Cache hit first, then most free slots; the earliest node wins ties.
            .max_by(|(a, node_a), (b, node_b)| {
                let hit = |node: &NodeOffer| task.template_sha256.is_some_and(|d| node.cached.contains(&d));
                hit(node_a).cmp(&hit(node_b)).then(free[*a].cmp(&free[*b])).then(b.cmp(a))
            })
            .map(|(n, _)| n);
        if let Some(n) = best {
            free[n] -= 1;
            placed.push((t, n));
        }
    }
    placed
}

/// Compares dotted version numbers numerically ("24.10" > "24.9"; missing parts are 0).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let parts = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.trim().parse().unwrap_or(0)).collect() };
    let (a, b) = (parts(a), parts(b));
    let len = a.len().max(b.len());
    (0..len)
        .map(|i| a.get(i).copied().unwrap_or(0).cmp(&b.get(i).copied().unwrap_or(0)))
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(free: u32) -> NodeOffer {
        NodeOffer {
            node_id: Uuid::new_v4(),
            connection_epoch: 1,
            name: "n".into(),
            free_slots: free,
            admin: AdminState::Active,
            tags: BTreeSet::new(),
            ae_versions: vec!["24.2".into()],
            ram_bytes: 32 << 30,
            has_gpu: false,
            has_ffmpeg: false,
            cached: HashSet::new(),
        }
    }

    fn task() -> Candidate {
        Candidate {
            id: Uuid::new_v4(),
            lane: Lane::Render,
            template_sha256: Some([7; 32]),
            min_ae_version: None,
            required_tags: Vec::new(),
            min_ram_bytes: None,
            needs_gpu: false,
            pinned_node_id: None,
            excluded: HashSet::new(),
            avoid_node: None,
        }
    }

    #[test]
    fn slots_are_never_exceeded() {
        let nodes = [node(2), node(1)];
        let tasks: Vec<Candidate> = (0..10).map(|_| task()).collect();
        let placed = place(&tasks, &nodes);
        assert_eq!(placed.len(), 3);
        assert_eq!(placed.iter().filter(|(_, n)| *n == 0).count(), 2);
        assert_eq!(placed.iter().filter(|(_, n)| *n == 1).count(), 1);
        assert_eq!(placed.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [0, 1, 2], "in dispatch order");
    }

    #[test]
    fn admin_states() {
        let mut draining = node(4);
        draining.admin = AdminState::Draining;
        let mut quarantined = node(4);
        quarantined.admin = AdminState::Quarantined;
        assert!(!eligible(&task(), &draining));
        assert!(!eligible(&task(), &quarantined));
        let probe = Candidate { lane: Lane::Probe, pinned_node_id: Some(quarantined.node_id), ..task() };
        assert!(eligible(&probe, &quarantined));
        assert!(!eligible(&probe, &draining));
        assert!(!eligible(&probe, &node(1)), "pinned elsewhere");
    }

    #[test]
    fn capabilities() {
        let mut big = node(1);
        big.tags = ["gpu".to_owned(), "eu".to_owned()].into();
        big.has_gpu = true;
        big.ram_bytes = 128 << 30;
        big.ae_versions = vec!["23.6".into(), "25.0".into()];
        let small = node(1);
        let demanding = Candidate {
            min_ae_version: Some("24.10".into()),
            required_tags: vec!["gpu".into()],
            min_ram_bytes: Some(64 << 30),
            needs_gpu: true,
            ..task()
        };
        assert!(eligible(&demanding, &big));
        assert!(!eligible(&demanding, &small));
        assert!(!eligible(&Candidate { min_ae_version: Some("25.1".into()), ..task() }, &big));
        let mut assembler = node(1);
        assembler.ae_versions.clear();
        let assemble = Candidate { lane: Lane::Assemble, template_sha256: None, ..task() };
        assert!(!eligible(&assemble, &assembler), "no ffmpeg");
        assembler.has_ffmpeg = true;
        assert!(eligible(&assemble, &assembler));
        assert!(!eligible(&task(), &assembler), "no After Effects");
        let mut excluded = task();
        excluded.excluded.insert(big.node_id);
        assert!(!eligible(&excluded, &big));
    }

    #[test]
    fn cache_hits_then_free_slots() {
        let mut warm = node(1);
        warm.cached.insert([7; 32]);
        let cold = node(3);
        let placed = place(&[task()], &[cold.clone(), warm]);
        assert_eq!(placed, [(0, 1)], "the node holding the template wins");
        let placed = place(&[task()], &[node(1), cold]);
        assert_eq!(placed, [(0, 1)], "then the freer node");
    }

    #[test]
    fn a_node_to_avoid_is_taken_only_when_no_other_can() {
        let mut warm = node(2);
        warm.cached.insert([7; 32]);
        let other = node(1);
        let repair = Candidate { lane: Lane::Repair, avoid_node: Some(warm.node_id), ..task() };
        assert_eq!(
            place(std::slice::from_ref(&repair), &[warm.clone(), other.clone()]),
            [(0, 1)],
            "another node, cache aside"
        );

        // The other node's one slot goes to the first repair; the second falls back.
        let placed = place(&[repair.clone(), repair.clone()], &[warm.clone(), other.clone()]);
        assert_eq!(placed, [(0, 1), (1, 0)]);

        // Alone (a one-node farm), full elsewhere, or the others not eligible: the node repairs.
        assert_eq!(place(std::slice::from_ref(&repair), &[warm.clone()]), [(0, 0)]);
        assert_eq!(place(std::slice::from_ref(&repair), &[warm.clone(), node(0)]), [(0, 0)]);
        let mut excluded = repair.clone();
        excluded.excluded.insert(other.node_id);
        assert_eq!(place(&[excluded], &[warm.clone(), other.clone()]), [(0, 0)]);
        let mut draining = other;
        draining.admin = AdminState::Draining;
        assert_eq!(place(&[repair], &[warm.clone(), draining]), [(0, 0)]);

        // Tasks without a node to avoid are placed as before.
        assert_eq!(place(&[task()], &[node(1), warm]), [(0, 1)]);
    }

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(compare_versions("24.10", "24.9"), Ordering::Greater);
        assert_eq!(compare_versions("24", "24.0.0"), Ordering::Equal);
        assert_eq!(compare_versions("23.6.1", "24"), Ordering::Less);
    }
}
