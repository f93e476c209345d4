//! What the machine is (facts, sent in Hello) and how loaded it is (health, sent every few
//! seconds): CPU, memory, load, the work and cache directories' disks, GPUs, and After Effects
//! processes.
//!
//! The agent should idle at a few megabytes and well under 0.1 % CPU, so the [`Sampler`] keeps
//! one sysinfo `System` and `Disks` and refreshes only what a sample reports: global CPU,
//! memory, process memory/CPU (no command lines, environments or threads), and the storage of
//! the two disks it watches. The disk list itself is read once (and again with the facts).

pub mod ae;
mod gpu;
pub mod proto;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sysinfo::{
    CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Pid, ProcessRefreshKind, ProcessesToUpdate, System,
    UpdateKind,
};

pub use ae::AeInstall;

/// Executable names of After Effects and aerender on Windows and macOS.
pub const AE_PROCESS_NAMES: [&str; 5] = ["AfterFX", "AfterFX.exe", "aerender", "aerender.exe", "After Effects"];

#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error("cannot read system information: {0}")]
    System(#[from] sysinfo::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Os {
    Windows,
    MacOs,
    Linux,
    Other,
}

impl Os {
    pub fn host() -> Os {
        if cfg!(windows) {
            Os::Windows
        } else if cfg!(target_os = "macos") {
            Os::MacOs
        } else if cfg!(target_os = "linux") {
            Os::Linux
        } else {
            Os::Other
        }
    }
}

/// A GPU as the driver describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub vendor: String,
    /// Dedicated memory; 0 when unknown.
    pub memory_bytes: u64,
    pub driver_version: String,
}

/// What the machine is.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineFacts {
    pub hostname: String,
    pub os: Os,
    pub os_version: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub ram_bytes: u64,
    pub gpus: Vec<GpuInfo>,
    pub ae_installs: Vec<AeInstall>,
    /// First line of `ffmpeg -version`; `None` without ffmpeg.
    pub ffmpeg_version: Option<String>,
    /// The session's locale, e.g. "de_DE"; empty when unknown.
    pub locale: String,
    pub simulated: bool,
}

/// What the sampler cannot see for itself: the software the agent found at start.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Software {
    pub ae_installs: Vec<AeInstall>,
    pub ffmpeg_version: Option<String>,
    pub simulated: bool,
}

/// What a directory is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskRole {
    Work,
    Cache,
}

/// One watched directory's file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskUsage {
    pub role: DiskRole,
    pub path: PathBuf,
    pub total_bytes: u64,
    /// Free for the agent's user.
    pub free_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAverage {
    pub one: f64,
    pub five: f64,
    pub fifteen: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GpuUsage {
    pub index: u32,
    pub name: String,
    /// 0..=100; `None` when the driver does not say.
    pub utilization_percent: Option<f64>,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub temperature_celsius: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AeProcess {
    pub pid: u32,
    pub name: String,
    pub resident_bytes: u64,
    /// One busy core is 100.
    pub cpu_percent: f64,
    /// The task whose process tree it is in; `None` for a stray.
    pub task_id: Option<String>,
    pub started_at: Option<SystemTime>,
}

/// What the agent is doing, for a health sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskLoad {
    pub running_tasks: u32,
    pub slots: u32,
    pub cache_used_bytes: u64,
    pub cache_limit_bytes: u64,
    /// The process each running render was started as, with its task id: After Effects
    /// processes below one of them are attributed to that task.
    pub task_roots: Vec<(u32, String)>,
}

/// One health sample.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSample {
    pub recorded_at: SystemTime,
    /// The whole machine, 0..=100.
    pub cpu_percent: f64,
    pub memory_total_bytes: u64,
    /// Total minus available.
    pub memory_used_bytes: u64,
    pub disks: Vec<DiskUsage>,
    /// `None` on Windows.
    pub load: Option<LoadAverage>,
    pub gpus: Vec<GpuUsage>,
    pub ae_processes: Vec<AeProcess>,
    pub tasks: TaskLoad,
}

impl HealthSample {
    pub fn ae_memory_bytes(&self) -> u64 {
        self.ae_processes.iter().map(|p| p.resident_bytes).sum()
    }
}

/// Takes facts and health samples; create one and keep it (CPU figures are deltas between
/// refreshes).
pub struct Sampler {
    system: System,
    disks: Disks,
    gpus: gpu::Gpus,
    watched: [(DiskRole, PathBuf); 2],
    /// Samples taken, to space out process scans while idle.
    samples: u64,
    /// Whether the last process scan found After Effects processes.
    saw_ae: bool,
}

/// While no task runs and no After Effects process was seen, the process table (the costliest
/// part of a sample: every process's memory and CPU) is scanned only every this many samples,
/// every 30 s at the default 5 s interval: strays still show within half a minute, and the idle
/// agent stays near zero CPU.
const IDLE_PROCESS_SCAN_EVERY: u64 = 6;

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").field("watched", &self.watched).field("nvml", &self.gpus.present()).finish()
    }
}

/// Process details a sample needs: memory and CPU only.
fn process_refresh() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing().with_memory().with_cpu().with_exe(UpdateKind::Never).without_tasks()
}

impl Sampler {
    /// A sampler watching the work and cache directories' file systems. Loads NVML if an NVIDIA
    /// driver is there.
    pub fn new(work_dir: &Path, cache_dir: &Path) -> Result<Sampler, MachineError> {
        let mut system = System::new()?;
        // A first reading, so the first sample's CPU figures cover the time since now.
        system.refresh_cpu_usage();
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, process_refresh());
        let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing().with_storage())?;
        Ok(Sampler {
            system,
            disks,
            gpus: gpu::Gpus::init(),
            watched: [(DiskRole::Work, work_dir.to_path_buf()), (DiskRole::Cache, cache_dir.to_path_buf())],
            samples: 0,
            saw_ae: false,
        })
    }

    /// What the machine is now.
    pub fn facts(&mut self, software: Software) -> MachineFacts {
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        self.system.refresh_cpu_list(CpuRefreshKind::nothing());
        // Mounts may have changed since start.
        self.disks.refresh_specifics(true, DiskRefreshKind::nothing().with_storage());
        let cpus = self.system.cpus();
        MachineFacts {
            hostname: System::host_name().unwrap_or_default().chars().take(255).collect(),
            os: Os::host(),
            os_version: System::long_os_version().unwrap_or_default(),
            arch: std::env::consts::ARCH.to_owned(),
            cpu_model: cpus.first().map(|c| c.brand().trim().to_owned()).unwrap_or_default(),
            cpu_cores: u32::try_from(cpus.len()).unwrap_or(u32::MAX),
            ram_bytes: self.system.total_memory(),
            gpus: self.gpus.info(),
            ae_installs: software.ae_installs,
            ffmpeg_version: software.ffmpeg_version,
            locale: locale_from(|name| std::env::var(name).ok()),
            simulated: software.simulated,
        }
    }

    /// A health sample. CPU figures cover the time since the previous sample (or since
    /// [`Sampler::new`]).
    pub fn sample(&mut self, tasks: TaskLoad) -> HealthSample {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
        let scan = tasks.running_tasks > 0 || self.saw_ae || self.samples.is_multiple_of(IDLE_PROCESS_SCAN_EVERY);
        self.samples += 1;
        let ae_processes = if scan {
            self.system.refresh_processes_specifics(ProcessesToUpdate::All, true, process_refresh());
            self.ae_processes(&tasks.task_roots)
        } else {
            Vec::new()
        };
        self.saw_ae = !ae_processes.is_empty();
        HealthSample {
            recorded_at: SystemTime::now(),
            cpu_percent: f64::from(self.system.global_cpu_usage()).clamp(0.0, 100.0),
            memory_total_bytes: self.system.total_memory(),
            memory_used_bytes: self.system.total_memory().saturating_sub(self.system.available_memory()),
            disks: self.disk_usage(),
            load: load_average(),
            gpus: self.gpus.usage(),
            ae_processes,
            tasks,
        }
    }

    fn disk_usage(&mut self) -> Vec<DiskUsage> {
        let mut usage = Vec::with_capacity(self.watched.len());
        for (role, path) in &self.watched {
            // The directory may not exist yet; its nearest existing ancestor is on the same disk.
            let resolved = path.ancestors().find_map(|p| p.canonicalize().ok()).unwrap_or_else(|| path.clone());
            let Some(index) = mount_for(&resolved, self.disks.iter().map(sysinfo::Disk::mount_point)) else {
                continue;
            };
            let disk = &mut self.disks[index];
            disk.refresh_specifics(DiskRefreshKind::nothing().with_storage());
            usage.push(DiskUsage {
                role: *role,
                path: path.clone(),
                total_bytes: disk.total_space(),
                free_bytes: disk.available_space(),
            });
        }
        usage
    }

    fn ae_processes(&self, task_roots: &[(u32, String)]) -> Vec<AeProcess> {
        let processes = self.system.processes();
        let task_of = |pid: Pid| -> Option<String> {
            let mut current = Some(pid);
            // Bounded: a parent loop (pid reuse) must not hang the sampler.
            for _ in 0..64 {
                let here = current?;
                if let Some((_, task)) = task_roots.iter().find(|(root, _)| *root == here.as_u32()) {
                    return Some(task.clone());
                }
                current = processes.get(&here).and_then(sysinfo::Process::parent);
            }
            None
        };
        let mut found: Vec<AeProcess> = processes
            .values()
            .filter(|p| p.thread_kind().is_none())
            .filter_map(|p| {
                let name = p.name().to_str()?;
                AE_PROCESS_NAMES.contains(&name).then(|| AeProcess {
                    pid: p.pid().as_u32(),
                    name: name.to_owned(),
                    resident_bytes: p.memory(),
                    cpu_percent: f64::from(p.cpu_usage()),
                    task_id: task_of(p.pid()),
                    started_at: (p.start_time() > 0)
                        .then(|| SystemTime::UNIX_EPOCH + Duration::from_secs(p.start_time())),
                })
            })
            .collect();
        found.sort_by_key(|p| p.pid);
        found
    }
}

/// The index of the mount point that is the longest prefix of `path`.
fn mount_for<'a>(path: &Path, mounts: impl Iterator<Item = &'a Path>) -> Option<usize> {
    mounts
        .enumerate()
        .filter(|(_, mount)| path.starts_with(mount))
        .max_by_key(|(_, mount)| mount.components().count())
        .map(|(index, _)| index)
}

fn load_average() -> Option<LoadAverage> {
    // Windows has no load average (sysinfo would report zeros).
    if cfg!(windows) {
        return None;
    }
    System::load_average().ok().map(|l| LoadAverage { one: l.one, five: l.five, fifteen: l.fifteen })
}

/// "de_DE.UTF-8" → "de_DE", from the variables POSIX consults, in its order.
fn locale_from(var: impl Fn(&str) -> Option<String>) -> String {
    ["LC_ALL", "LC_MESSAGES", "LANG"]
        .iter()
        .filter_map(|name| var(name))
        .find(|v| !v.is_empty())
        .map(|v| v.split(['.', '@']).next().unwrap_or_default().to_owned())
        .filter(|v| v != "C" && v != "POSIX")
        .unwrap_or_default()
}

/// The first line of `ffmpeg -version`, or `None` when ffmpeg does not run within `timeout`.
pub async fn probe_ffmpeg(ffmpeg: &Path, timeout: Duration) -> Option<String> {
    let run = tokio::process::Command::new(ffmpeg).arg("-version").kill_on_drop(true).output();
    let output = tokio::time::timeout(timeout, run).await.ok()?.ok()?;
    if !output.status.success() {
        return None;
    }
    String::from_utf8_lossy(&output.stdout).lines().next().map(|l| l.trim().to_owned()).filter(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_twice_gives_sane_values() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir(&work).unwrap();
        // The cache directory does not exist yet: its parent's disk counts.
        let cache = dir.path().join("not-yet/cache");
        let mut sampler = Sampler::new(&work, &cache).unwrap();

        let facts = sampler.facts(Software::default());
        assert!(facts.ram_bytes > 0);
        assert!(facts.cpu_cores > 0);
        assert_eq!(facts.os, Os::host());
        assert!(!facts.arch.is_empty());

        let tasks = TaskLoad {
            running_tasks: 1,
            slots: 2,
            task_roots: vec![(std::process::id(), "t".into())],
            ..TaskLoad::default()
        };
        let started = std::time::Instant::now();
        let first = sampler.sample(tasks.clone());
        let second = sampler.sample(tasks);
        eprintln!("two samples took {:?}", started.elapsed());
        for sample in [&first, &second] {
            assert!(sample.memory_total_bytes > 0);
            assert!(sample.memory_used_bytes <= sample.memory_total_bytes);
            assert!((0.0..=100.0).contains(&sample.cpu_percent), "{}", sample.cpu_percent);
            let roles: Vec<DiskRole> = sample.disks.iter().map(|d| d.role).collect();
            assert_eq!(roles, [DiskRole::Work, DiskRole::Cache], "{:?}", sample.disks);
            assert!(sample.disks.iter().all(|d| d.total_bytes > 0 && d.free_bytes <= d.total_bytes));
            assert_eq!(sample.tasks.running_tasks, 1);
            if cfg!(target_os = "linux") {
                assert!(sample.load.is_some());
            }
        }
        assert!(second.recorded_at >= first.recorded_at);
    }

    #[test]
    fn cost_of_a_sample() {
        // Printed, not asserted (timings are not stable here): `cargo test -- --nocapture`.
        let dir = tempfile::tempdir().unwrap();
        let mut sampler = Sampler::new(dir.path(), dir.path()).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..100 {
            sampler.sample(TaskLoad::default());
        }
        eprintln!("one health sample: {:?} on average", started.elapsed() / 100);
    }

    #[test]
    fn longest_mount_prefix_wins() {
        let mounts = [Path::new("/"), Path::new("/var"), Path::new("/var/lib/flatrender-agent"), Path::new("/va")];
        let pick = |p: &str| mount_for(Path::new(p), mounts.iter().copied());
        assert_eq!(pick("/var/lib/flatrender-agent/work"), Some(2));
        assert_eq!(pick("/var/tmp"), Some(1));
        assert_eq!(pick("/vault"), Some(0), "component-wise, not by characters");
        assert_eq!(mount_for(Path::new("relative"), mounts.iter().copied()), None);
    }

    #[test]
    fn locale_follows_posix_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!(locale_from(env(&[("LANG", "de_DE.UTF-8")])), "de_DE");
        assert_eq!(locale_from(env(&[("LANG", "de_DE.UTF-8"), ("LC_ALL", "fr_FR@euro")])), "fr_FR");
        assert_eq!(locale_from(env(&[("LANG", "C.UTF-8")])), "");
        assert_eq!(locale_from(env(&[])), "");
    }

    #[tokio::test]
    async fn missing_ffmpeg_is_none() {
        assert_eq!(probe_ffmpeg(Path::new("/nonexistent/ffmpeg"), Duration::from_secs(5)).await, None);
    }
}
